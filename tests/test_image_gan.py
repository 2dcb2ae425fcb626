"""The image GAN iteration (SIDDM and DDGAN on a tiny UNet generator and conv discriminator): the terms
of each ablation, that every parameter of the stepped net takes part, a few real iterations through
Lightning, and the speed options (channels_last, bf16 autocast, torch.compile) that must change speed,
not results."""

from __future__ import annotations

import copy

import pytest
import torch
from hydra.utils import instantiate

from siddm_lab.callbacks.speed import NetSpeedups, to_channels_last
from siddm_lab.errors import ConfigError
from tests.helpers import FAST, compose_cfg, run_train

# The MNIST recipe's nets, narrowed to sklearn's 8x8 digits (always offline)
TINY = FAST + ["experiment=siddm_mnist", "dataset=digits", "net.ch=16", "net.norm_groups=8", "model.nz=8",
               "net.channel_mult=[1,2]", "net.attn_resolutions=[4]", "discriminator.ch=16",
               "discriminator.norm_groups=8", "discriminator.channel_mult=[1,2]", "dataset.batch_size=16",
               "model.objective.lazy_reg=2"]

TERMS = {  # (model, ablation): (discriminator terms, generator terms)
    ("siddm", "full"): ({"d_real", "d_fake", "r1", "disc_reg", "entropy_c"}, {"g_adv", "afd_ce", "afd_entropy"}),
    ("siddm", "no_afd"): ({"d_real", "d_fake", "r1", "disc_reg"}, {"g_adv"}),
    ("siddm", "no_disc_reg"): ({"d_real", "d_fake", "r1", "entropy_c"}, {"g_adv", "afd_ce", "afd_entropy"}),
    ("ddgan", "full"): ({"d_real", "d_fake", "r1"}, {"g_adv"}),
}


def build(model="siddm", ablation="full", extra=()):
    torch.manual_seed(0)
    cfg = compose_cfg(TINY + [f"model={model}", f"ablation={ablation}", *extra])
    m = instantiate(cfg.model)
    m.data_shape = (1, 8, 8)
    return m


def x0_batch(n=16):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 1


def terms(m, seed=3, iteration=0):
    torch.manual_seed(seed)
    d = m.objective.d_terms(m.parts(), x0_batch(), iteration)
    torch.manual_seed(seed + 1)
    g = m.objective.g_terms(m.parts(), x0_batch(), iteration)
    return d, g


@pytest.mark.parametrize("model,ablation", sorted(TERMS))
def test_image_iteration_terms_and_every_parameter_steps(model, ablation):
    m = build(model, ablation)
    assert m.discriminator.joint == (model == "ddgan")
    d, g = terms(m)
    assert set(d) == TERMS[model, ablation][0] and set(g) == TERMS[model, ablation][1]
    assert all(torch.isfinite(v) for v in {**d, **g}.values())
    sum(d.values()).backward()
    assert not [n for n, p in m.discriminator.named_parameters() if p.grad is None]
    m.zero_grad(set_to_none=True)
    sum(g.values()).backward()
    assert not [n for n, p in m.generator.named_parameters() if p.grad is None]
    # the generator's loss reaches it only through x'_prev: the D step leaves the generator without gradient
    m.zero_grad(set_to_none=True)
    d, _ = terms(m)
    sum(d.values()).backward()
    assert all(p.grad is None for p in m.generator.parameters())


@pytest.mark.parametrize("model,ablation", [("siddm", "full"), ("ddgan", "full"), ("siddm", "no_afd")])
def test_image_gan_trains_through_lightning(model, ablation, tmp_path):
    metrics, _ = run_train(TINY[2:] + [f"model={model}", f"ablation={ablation}", "trainer.max_steps=6",
                                       "trainer.val_check_interval=3", "callbacks.evaluation.num_samples=16",
                                       "eval.num_samples=32", "eval.batch_size=32",
                                       "model.log_every_n_steps=1", "trainer.log_every_n_steps=1"], tmp_path)
    assert metrics["nfe"] == 4
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    ck = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["global_step"] == 6  # iterations: the D step is not counted
    import csv

    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    losses = [float(r["train/loss_d"]) for r in rows if r.get("train/loss_d")]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))


def _same_terms(a, b, rtol, atol):
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)


def test_channels_last_changes_speed_not_results():
    m = build()
    fast = copy.deepcopy(m)
    to_channels_last(fast.generator), to_channels_last(fast.discriminator)
    conv = fast.generator.down[0][0].conv1.weight  # 16 -> 16 channels (a 1-channel weight is both formats)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    d0, g0 = terms(m)
    d1, g1 = terms(fast)
    _same_terms(d0, d1, 1e-5, 1e-6)
    _same_terms(g0, g1, 1e-5, 1e-6)
    sum(g0.values()).backward()
    sum(g1.values()).backward()
    for (n, p), q in zip(m.generator.named_parameters(), fast.generator.parameters()):
        # the same sums in another order: equal up to float32 rounding of the gradient's scale
        scale = float(p.grad.abs().max())
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4 * scale + 1e-8, msg=n)


def test_bf16_autocast_stays_within_bf16_rounding():
    """bf16 autocast (trainer.precision=bf16-mixed) rounds the nets' matmuls/convs to 8 bits of mantissa:
    the losses agree with fp32 to bf16's relative precision (~0.4 %) accumulated over a few layers."""
    m = build()
    d0, g0 = terms(m)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d1, g1 = terms(m)
    _same_terms(d0, {k: v.float() for k, v in d1.items()}, 5e-2, 5e-3)
    _same_terms(g0, {k: v.float() for k, v in g1.items()}, 5e-2, 5e-3)


def test_speed_callback_keeps_parameter_names_and_checkpoints(tmp_path):
    metrics, _ = run_train(TINY[2:] + ["trainer.max_steps=2", "trainer.val_check_interval=2",
                                       "callbacks.evaluation.num_samples=0", "eval.num_samples=16",
                                       "callbacks.speed.channels_last=true"], tmp_path)
    ck = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    plain = build()
    names = {k for k in ck["state_dict"]}
    assert {f"generator.{k}" for k in plain.generator.state_dict()} <= names
    plain.load_state_dict(ck["state_dict"])  # loads into a model built without the option


def test_speed_options_are_checked():
    with pytest.raises(ConfigError, match="callbacks.speed.compile_mode='fastest' is unknown"):
        NetSpeedups(compile_mode="fastest")
    with pytest.raises(ConfigError, match="callbacks.speed.channels_last='yes' is invalid"):
        NetSpeedups(channels_last="yes")


@pytest.mark.slow
def test_compiled_nets_give_the_same_losses():
    """torch.compile of both nets (nn.Module.compile: names unchanged) computes the same terms."""
    m = build()
    fast = copy.deepcopy(m)
    fast.generator.compile()
    fast.discriminator.compile()
    d0, g0 = terms(m, iteration=1)
    d1, g1 = terms(fast, iteration=1)
    _same_terms(d0, d1, 1e-4, 1e-5)
    _same_terms(g0, g1, 1e-4, 1e-5)
    assert set(fast.generator.state_dict()) == set(m.generator.state_dict())


@pytest.mark.slow
def test_compile_with_r1_trains_the_generator_compiled_and_the_discriminator_eager(tmp_path):
    """R1 needs the discriminator's double backward, which compiled modules lack: a run with compile and R1
    (at iteration 0 and every 2nd) trains, with the generator compiled."""
    metrics, _ = run_train(TINY[2:] + ["trainer.max_steps=3", "trainer.val_check_interval=3",
                                       "callbacks.evaluation.num_samples=0", "eval.num_samples=16",
                                       "callbacks.speed.compile=true"], tmp_path)
    assert metrics["nfe"] == 4
    ck = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["global_step"] == 3
    assert not any("_orig_mod" in k for k in ck["state_dict"])
