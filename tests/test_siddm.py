"""SIDDM / DDGAN module: which inputs the discriminators see, which terms each ablation switches,
step counting, reproducible sampling after save/load."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from siddm_lab.errors import ConfigError, NonFiniteLossError
from tests.helpers import FAST, compose_cfg, run_train

TOY = FAST + [
    "net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4", "dataset.n_train=2048", "dataset.n_val=256",
    "dataset.n_eval=500", "dataset.batch_size=128", "net.hidden=32", "discriminator.hidden=32",
    "model.eval_num_samples=100", "eval.num_samples=200",
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

    def forward(self, x_prev, t, x_t=None, heads=("logit",)):
        self.calls.append(x_t is not None)
        return self.inner(x_prev, t, x_t, heads)


def _batch():
    torch.manual_seed(0)
    x0 = torch.randn(16, 2)
    t = torch.randint(0, 4, (16,))
    return x0, t


@pytest.mark.parametrize("model,sees_x_t", [("siddm", False), ("ddgan", True)])
def test_discriminator_inputs_marginal_vs_joint(model, sees_x_t):
    m = build([f"model={model}"])
    spy = Spy(m.discriminator)
    m.discriminator = spy
    x0, t = _batch()
    x_prev, x_t = m.diffusion.q_sample_pairs(x0, t)
    m.d_losses(x0, x_prev, x_t, t, step=0)
    m.g_losses(x_t, t)
    assert spy.calls and all(c == sees_x_t for c in spy.calls)


def test_mode_and_discriminator_must_agree():
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


def _losses(overrides):
    torch.manual_seed(1)
    m = build(overrides)
    x0, t = _batch()
    torch.manual_seed(2)
    x_prev, x_t = m.diffusion.q_sample_pairs(x0, t)
    torch.manual_seed(3)
    d = m.d_losses(x0, x_prev, x_t, t, step=0)
    torch.manual_seed(4)
    g = m.g_losses(x_t, t)
    return {k: float(v) for k, v in d.items()}, {k: float(v) for k, v in g.items()}


@pytest.mark.parametrize("ablation", sorted(TERMS))
def test_each_ablation_switches_exactly_its_terms(ablation):
    d, g = _losses(["model=siddm", f"ablation={ablation}"])
    assert set(d) == TERMS[ablation][0]
    assert set(g) == TERMS[ablation][1]
    full_d, full_g = _losses(["model=siddm", "ablation=full"])
    # the terms an ablation keeps have exactly the full model's values (same nets, data and noise),
    # except where a removed head changes the parameter initialisation order
    if ablation in ("no_afd_no_reg", "no_afd", "no_entropy", "no_disc_reg"):
        return
    for k in set(d) & set(full_d):
        assert d[k] == pytest.approx(full_d[k]), k
    for k in set(g) & set(full_g):
        assert g[k] == pytest.approx(full_g[k]), k


@pytest.mark.parametrize("overrides", [["model=siddm", f"ablation={a}"] for a in sorted(TERMS)]
                         + [["model=ddgan"], ["model=siddm", "model.r1_gamma=0.1"]])
def test_every_parameter_takes_part_in_its_loss(overrides):
    """What plain DDP needs (no find_unused_parameters): in each step, every parameter of the net
    being updated gets a gradient, for every mode and ablation (the model builds only used heads)."""
    m = build(overrides)
    x0, t = _batch()
    x_prev, x_t = m.diffusion.q_sample_pairs(x0, t)
    sum(m.d_losses(x0, x_prev, x_t, t, step=0).values()).backward()
    unused = [n for n, p in m.discriminator.named_parameters() if p.grad is None]
    assert not unused, f"discriminator parameters without gradient: {unused}"
    m.zero_grad(set_to_none=True)
    sum(m.g_losses(x_t, t).values()).backward()
    unused = [n for n, p in m.generator.named_parameters() if p.grad is None]
    assert not unused, f"generator parameters without gradient: {unused}"


def test_lambda_afd_scales_only_afd_terms():
    d1, g1 = _losses(["model=siddm", "ablation.lambda_afd=1.0"])
    d2, g2 = _losses(["model=siddm", "ablation.lambda_afd=0.5"])
    assert g2["afd_ce"] == pytest.approx(0.5 * g1["afd_ce"])
    assert g2["afd_entropy"] == pytest.approx(0.5 * g1["afd_entropy"])
    assert d2["entropy_c"] == pytest.approx(0.5 * d1["entropy_c"])
    assert g2["g_adv"] == pytest.approx(g1["g_adv"])
    assert d2["d_real"] == pytest.approx(d1["d_real"]) and d2["disc_reg"] == pytest.approx(d1["disc_reg"])


def test_ddgan_has_no_afd_terms():
    d, g = _losses(["model=ddgan"])
    assert set(d) == {"d_real", "d_fake"} and set(g) == {"g_adv"}


def test_r1_every_lazy_reg_iterations():
    m = build(["model=siddm", "model.r1_gamma=0.05", "model.lazy_reg=3"])
    x0, t = _batch()
    x_prev, x_t = m.diffusion.q_sample_pairs(x0, t)
    assert "r1" in m.d_losses(x0, x_prev, x_t, t, step=3)
    assert "r1" not in m.d_losses(x0, x_prev, x_t, t, step=4)


def test_unknown_ablation_key():
    with pytest.raises(Exception, match="unknown"):
        build(["model=siddm", "+ablation.bogus=1"])


def test_training_counts_two_steps_per_iteration_and_sampling_is_reproducible(tmp_path):
    from siddm_lab.models.loading import load_model

    metrics, _ = run_train(TOY + ["model=siddm", "trainer.max_steps=20", "trainer.val_check_interval=5"], tmp_path)
    assert metrics["global_step"] == 20  # 10 iterations x (D step + G step)
    assert metrics["nfe"] == 4
    model, _ = load_model(tmp_path / "checkpoints" / "last.ckpt")
    a = model.sample(64, generator=torch.Generator().manual_seed(7))
    b = model.sample(64, generator=torch.Generator().manual_seed(7))
    c = model.sample(64, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    model2, _ = load_model(tmp_path / "checkpoints" / "last.ckpt")
    torch.testing.assert_close(model2.sample(64, generator=torch.Generator().manual_seed(7)), a)


def test_ddgan_trains(tmp_path):
    metrics, _ = run_train(TOY + ["model=ddgan", "trainer.max_steps=10", "trainer.val_check_interval=5"], tmp_path)
    assert metrics["global_step"] == 10 and "fd_2d" in metrics


def test_nan_discriminator_loss_stops(tmp_path):
    m = build(["model=siddm"])
    m.discriminator.logit[-1].bias.data.fill_(float("nan"))
    cfg = compose_cfg(TOY + ["model=siddm", "trainer.max_steps=4"], tmp_path)
    dm = instantiate(cfg.dataset)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    with pytest.raises(NonFiniteLossError, match="train/loss_d"):
        trainer.fit(m, datamodule=dm)


def test_generator_without_any_loss_is_refused():
    m = build(["model=ddgan", "ablation.adversarial=false"])
    x0, t = _batch()
    _, x_t = m.diffusion.q_sample_pairs(x0, t)
    with pytest.raises(ConfigError, match="no loss"):
        m.g_losses(x_t, t)


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
    t = torch.tensor([0, 1, 2, 3])
    x_prev, x_t = m.diffusion.q_sample_pairs(x0, t)
    d = m.d_losses(x0, x_prev, x_t, t, step=0)
    g = m.g_losses(x_t, t)
    assert all(torch.isfinite(v) for v in {**d, **g}.values())
    assert spy.calls and all(c == sees_x_t for c in spy.calls)
    if model == "siddm":
        assert {"disc_reg", "entropy_c"} <= set(d) and {"afd_ce", "afd_entropy"} <= set(g)
