"""SIDDM / DDGAN module: which inputs the discriminators see, which terms each ablation switches,
iteration counting, reproducible sampling after save/load."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from siddm_lab.errors import ConfigError, NonFiniteLossError
from tests.helpers import FAST, compose_cfg, run_train

TOY = FAST + [
    "net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4", "dataset.n_train=2048", "dataset.n_val=256",
    "dataset.n_eval=500", "dataset.batch_size=128", "net.hidden=32", "discriminator.hidden=32",
    "callbacks.evaluation.num_samples=100", "eval.num_samples=200",
]


def build(overrides):
    cfg = compose_cfg(TOY + overrides)
    model = instantiate(cfg.model)
    model.data_shape = (2,)
    return model


class Spy(torch.nn.Module):
    """Wraps a discriminator and records whether it was given x_t."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.joint, self.calls = inner, inner.joint, []

    def forward(self, x, t, x_t=None, heads=("logit",)):
        self.calls.append(x_t is not None)
        return self.inner(x, t, x_t, heads)


def _x0():
    torch.manual_seed(0)
    return torch.randn(16, 2)


def _terms(model, seed=3):
    torch.manual_seed(seed)
    d = model.objective.d_terms(model.parts(), _x0(), 0)
    torch.manual_seed(seed + 1)
    g = model.objective.g_terms(model.parts(), _x0(), 0)
    return d, g


@pytest.mark.parametrize("model,sees_x_t", [("siddm", False), ("ddgan", True)])
def test_discriminator_inputs_marginal_vs_joint(model, sees_x_t):
    m = build([f"model={model}"])
    spy = Spy(m.discriminator)
    m.discriminator = spy
    _terms(m)
    assert spy.calls and all(c == sees_x_t for c in spy.calls)


def test_objective_and_discriminator_must_agree():
    from siddm_lab.nets import TimeDiscriminator

    cfg = compose_cfg(TOY + ["model=ddgan"])
    with pytest.raises(Exception, match="joint discriminator"):
        instantiate(cfg.model, discriminator=TimeDiscriminator(joint=False))
    built = instantiate(cfg.model)
    assert built.discriminator.joint and built.discriminator.cond is None and built.discriminator.aux is None
    siddm = build(["model=siddm", "ablation=no_entropy"])
    assert not siddm.discriminator.joint and siddm.discriminator.cond is None and siddm.discriminator.aux is not None
    with pytest.raises(Exception, match="latent of size"):
        build(["model=siddm", "net.cond_dim=3"])


TERMS = {
    # ablation: (discriminator terms, generator terms)
    "full": ({"d_real", "d_fake", "disc_reg", "entropy_c"}, {"g_adv", "afd_ce", "afd_entropy"}),
    "no_afd": ({"d_real", "d_fake", "disc_reg"}, {"g_adv"}),
    "no_disc_reg": ({"d_real", "d_fake", "entropy_c"}, {"g_adv", "afd_ce", "afd_entropy"}),
    "no_afd_no_reg": ({"d_real", "d_fake"}, {"g_adv"}),
    "afd_only": ({"d_real", "d_fake", "disc_reg", "entropy_c"}, {"afd_ce", "afd_entropy"}),
    "no_entropy": ({"d_real", "d_fake", "disc_reg"}, {"g_adv", "afd_ce"}),
}


@pytest.mark.parametrize("ablation", sorted(TERMS))
def test_each_ablation_switches_exactly_its_terms(ablation):
    torch.manual_seed(1)
    d, g = _terms(build(["model=siddm", f"ablation={ablation}"]))
    assert set(d) == TERMS[ablation][0]
    assert set(g) == TERMS[ablation][1]
    if ablation != "afd_only":
        return
    # afd_only keeps the full model's heads, so its terms have exactly the full model's values
    torch.manual_seed(1)
    full_d, full_g = _terms(build(["model=siddm", "ablation=full"]))
    for k in d:
        assert float(d[k]) == pytest.approx(float(full_d[k])), k
    for k in g:
        assert float(g[k]) == pytest.approx(float(full_g[k])), k


@pytest.mark.parametrize("overrides", [["model=siddm", f"ablation={a}"] for a in sorted(TERMS)]
                         + [["model=ddgan"], ["model=siddm", "model.objective.r1_gamma=0.1"],
                            ["experiment=siddm_toy_released"],
                            ["experiment=siddm_toy_released", "+experiment/siddm_toy_released=ddgan_released"]])
def test_every_parameter_takes_part_in_its_loss(overrides):
    """What plain DDP needs (no find_unused_parameters): in each step, every parameter of the net
    being updated gets a gradient, for every objective and ablation (the model builds only used heads)."""
    m = build(overrides) if "experiment" not in overrides[0] else instantiate(compose_cfg(overrides).model)
    x0 = _x0()
    sum(m.objective.d_terms(m.parts(), x0, 0).values()).backward()
    unused = [n for n, p in m.discriminator.named_parameters() if p.grad is None]
    assert not unused, f"discriminator parameters without gradient: {unused}"
    m.zero_grad(set_to_none=True)
    sum(m.objective.g_terms(m.parts(), x0, 0).values()).backward()
    unused = [n for n, p in m.generator.named_parameters() if p.grad is None]
    assert not unused, f"generator parameters without gradient: {unused}"


def test_lambda_afd_scales_only_afd_terms():
    torch.manual_seed(1)
    d1, g1 = _terms(build(["model=siddm", "ablation.lambda_afd=1.0"]))
    torch.manual_seed(1)
    d2, g2 = _terms(build(["model=siddm", "ablation.lambda_afd=0.5"]))
    assert float(g2["afd_ce"]) == pytest.approx(0.5 * float(g1["afd_ce"]))
    assert float(g2["afd_entropy"]) == pytest.approx(0.5 * float(g1["afd_entropy"]))
    assert float(d2["entropy_c"]) == pytest.approx(0.5 * float(d1["entropy_c"]))
    assert float(g2["g_adv"]) == pytest.approx(float(g1["g_adv"]))
    assert float(d2["d_real"]) == pytest.approx(float(d1["d_real"]))
    assert float(d2["disc_reg"]) == pytest.approx(float(d1["disc_reg"]))


def test_r1_every_lazy_reg_iterations():
    m = build(["model=siddm", "model.objective.r1_gamma=0.05", "model.objective.lazy_reg=3"])
    assert "r1" in m.objective.d_terms(m.parts(), _x0(), 3)
    assert "r1" not in m.objective.d_terms(m.parts(), _x0(), 4)


@pytest.mark.parametrize("override,key", [("ablation.lambda_afd=-1", "lambda_afd"),
                                          ("ablation.afd_form=nope", "afd_form"),
                                          ("model.objective.disc_input=x1", "disc_input"),
                                          ("model.objective.disc_time=later", "disc_time"),
                                          ("model.objective.lazy_reg=0", "lazy_reg"),
                                          ("model.z_dist=cauchy", "z_dist")])
def test_bad_objective_settings_name_the_key(override, key):
    with pytest.raises(Exception, match=key):
        build(["model=siddm", override])


@pytest.mark.parametrize("override,match", [("+ablation.bogus=1", r"^ablation keys \['bogus'\] are unknown"),
                                            ("ablation.lambda_afd=abc", r"^ablation.lambda_afd='abc' is invalid"),
                                            ("seeds=[1,1]", r"^seeds=\[1, 1\] is invalid"),
                                            ("seeds=[-1]", r"^seeds=\[-1\] is invalid")])
def test_bad_ablation_and_seeds_fail_before_any_work(override, match):
    """The ablation's key names are the config's rule; its values the objective's, the seeds the ensemble's
    (``build_model``): all refused before any work (``preflight``)."""
    from siddm_lab.training import preflight

    with pytest.raises(ConfigError, match=match):
        preflight(compose_cfg(TOY + ["model=siddm", override]))


def test_global_step_counts_iterations_and_sampling_is_reproducible(tmp_path):
    from siddm_lab.models.loading import load_model

    metrics, _ = run_train(TOY + ["model=siddm", "trainer.max_steps=10", "trainer.val_check_interval=5"], tmp_path)
    assert metrics["global_step"] == 10  # 10 iterations, each one D step + one G step
    assert metrics["nfe"] == 4
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    opt_g, opt_d = ckpt["optimizer_states"]
    assert {int(s["step"]) for s in opt_g["state"].values()} == {10}
    assert {int(s["step"]) for s in opt_d["state"].values()} == {10}
    model, _ = load_model(tmp_path / "checkpoints" / "last.ckpt")
    a = model.sample(64, generator=torch.Generator().manual_seed(7))
    b = model.sample(64, generator=torch.Generator().manual_seed(7))
    c = model.sample(64, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    model2, _ = load_model(tmp_path / "checkpoints" / "last.ckpt")
    torch.testing.assert_close(model2.sample(64, generator=torch.Generator().manual_seed(7)), a)


def test_ema_of_a_gan_updates_every_iteration(tmp_path):
    """EMA with update_every_n_steps=2 must update a GAN model (it never did when global_step counted two
    optimizer steps per iteration and the update index was always odd)."""
    run_train(TOY + ["model=siddm", "trainer.max_steps=6", "trainer.val_check_interval=6",
                     "callbacks.ema.update_every_n_steps=2", "callbacks.ema.decay=0.5"], tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    ema, raw = ckpt["state_dict"], ckpt["current_model_state"]
    assert any(not torch.equal(ema[k], raw[k]) for k in raw if k.startswith("generator."))
    assert ckpt["callbacks"]["EMA"]["latest_update_step"] == 5  # updates after iterations 1, 3, 5


def test_ddgan_trains(tmp_path):
    metrics, _ = run_train(TOY + ["model=ddgan", "trainer.max_steps=5", "trainer.val_check_interval=5"], tmp_path)
    assert metrics["global_step"] == 5 and "fd_2d" in metrics


def test_nan_discriminator_loss_stops(tmp_path):
    m = build(["model=siddm"])
    m.discriminator.logit[-1].bias.data.fill_(float("nan"))
    cfg = compose_cfg(TOY + ["model=siddm", "trainer.max_steps=4"], tmp_path)
    dm = instantiate(cfg.dataset)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    with pytest.raises(NonFiniteLossError, match="train/loss_d"):
        trainer.fit(m, datamodule=dm)


def test_generator_without_any_loss_is_refused():
    m = build(["model=ddgan", "model.objective.adversarial=0"])
    with pytest.raises(ConfigError, match="no loss"):
        m.objective.g_terms(m.parts(), _x0(), 0)


def test_validation_x_t_is_drawn_from_the_marginal(monkeypatch):
    """val/x0_mse feeds G an x_t ~ q(x_t | x0): one noise draw through q_sample (not a pair with the
    same noise reused for both steps)."""
    m = build(["model=siddm"])
    calls = []
    monkeypatch.setattr(m.diffusion, "q_sample_pairs", lambda *a, **k: calls.append("pairs"))
    m.log = lambda *a, **k: None
    loss = m.validation_step(_x0(), 0)
    assert torch.isfinite(loss) and not calls


@pytest.mark.parametrize("model,sees_x_t", [("siddm", False), ("ddgan", True)])
def test_image_siddm_losses_and_discriminator_inputs(model, sees_x_t, tmp_path):
    cfg = compose_cfg(FAST + ["experiment=siddm_mnist", f"model={model}", "net.ch=32", "model.nz=8",
                              "discriminator.ch=32", "dataset.channels=1", "dataset.image_size=8",
                              "net.channel_mult=[1,2]", "net.attn_resolutions=[]",
                              "discriminator.channel_mult=[1,2]"], tmp_path)
    m = instantiate(cfg.model)
    spy = Spy(m.discriminator)
    m.discriminator = spy
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    d = m.objective.d_terms(m.parts(), x0, 0)
    g = m.objective.g_terms(m.parts(), x0, 0)
    assert all(torch.isfinite(v) for v in {**d, **g}.values())
    assert spy.calls and all(c == sees_x_t for c in spy.calls)
    if model == "siddm":
        assert {"disc_reg", "entropy_c"} <= set(d) and {"afd_ce", "afd_entropy"} <= set(g)
