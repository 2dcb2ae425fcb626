"""Gamma noise (Gamma-DDPM): forward marginals against closed forms (Monte Carlo), the shape constants,
reproducible draws, ancestral sampling with Gamma noise, and the options that refuse it."""

from __future__ import annotations

import math

import pytest
import torch

from siddm_lab.diffusion import AncestralSampler, DDIMSampler, GaussianDiffusion, RandomSource, sample_loop
from siddm_lab.diffusion.gamma import GammaDiffusion, centred_gamma
from siddm_lab.errors import ConfigError


@pytest.fixture(scope="module")
def gamma():
    return GaussianDiffusion.from_schedule("linear", 1000, noise={"name": "gamma", "theta0": 0.01})


def test_the_shapes_make_the_noise_variance_one_minus_alpha_bar(gamma):
    """k̄_t θ_t² = 1 − ᾱ_t (REFERENCES §7), k_t = β_t/(ᾱ_t θ0²), θ_t = sqrt(ᾱ_t) θ0."""
    assert isinstance(gamma, GammaDiffusion) and gamma.noise == "gamma"
    torch.testing.assert_close(gamma.gamma_k_cumsum * gamma.gamma_theta**2, 1 - gamma.alphas_cumprod,
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gamma.gamma_k[5], gamma.betas[5] / (gamma.alphas_cumprod[5] * 1e-4))


@pytest.mark.parametrize("t", [0, 3, 30, 999])
def test_forward_marginal_mean_variance_and_skewness(gamma, t):
    """x_t | x0 from q_sample with the process's noise: mean sqrt(ᾱ_t) x0, variance 1 − ᾱ_t and the Gamma's
    skewness 2/sqrt(k̄_t) (a Gaussian has 0), over 400k draws."""
    n = 400_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    tt = torch.full((n,), t)
    torch.manual_seed(0)
    x_t = gamma.q_sample(x0, tt, gamma.noise_like(x0, tt)).squeeze(1)
    ab = float(gamma.alphas_cumprod[t])
    k = float(gamma.gamma_k_cumsum[t])
    mean, var = float(x_t.mean()), float(x_t.var())
    skew = float(((x_t - mean) ** 3).mean()) / var**1.5
    assert abs(mean - math.sqrt(ab) * 0.7) < 4 * math.sqrt((1 - ab) / n) + 1e-9
    assert abs(var / (1 - ab) - 1) < 0.01
    assert abs(skew - 2 / math.sqrt(k)) < 0.03 + 0.05 * 2 / math.sqrt(k)
    if t == 0:
        assert skew > 1.5  # k̄_0 = β_0/(ᾱ_0 θ0²) ≈ 1 (exponential noise, skewness 2): far from Gaussian


def test_gaussian_noise_is_the_default_and_unchanged():
    d = GaussianDiffusion.from_schedule("linear", 100)
    assert type(d) is GaussianDiffusion and d.noise == "gaussian"
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x = torch.zeros(4, 2)
    torch.testing.assert_close(d.noise_like(x, torch.zeros(4, dtype=torch.long), RandomSource.single(g1)),
                               torch.randn(4, 2, generator=g2))


def test_draws_follow_the_generator(gamma):
    k = torch.full((1000,), 2.0, dtype=torch.float64)
    a = centred_gamma(k, torch.Generator().manual_seed(1))
    b = centred_gamma(k, torch.Generator().manual_seed(1))
    c = centred_gamma(k, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    state = torch.random.get_rng_state()
    centred_gamma(k, torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone


def test_ancestral_sampling_draws_gamma_noise_and_deterministic_ddim_none():
    """An exact denoiser of data N(0, s2): ancestral sampling with Gamma noise of θ0 = 0.01 ends near the
    data's variance; the step noise is Gamma (k_0 ≈ 1: visibly skewed); stochastic DDIM is refused, η = 0
    is allowed."""
    d = GaussianDiffusion.from_schedule("linear", 200, noise={"name": "gamma", "theta0": 0.01})
    s2 = 0.25
    ab_all = d.alphas_cumprod.float()

    def predict(x, t):
        ab = ab_all[t][:, None]
        return d.to_x0_eps("eps", x, t, (1 - ab).sqrt() * x / (ab * s2 + 1 - ab))

    z = d.step_noise(torch.zeros(200_000, 1), 0, torch.Generator().manual_seed(0)).squeeze(1)
    k0 = float(d.gamma_k[0])
    assert abs(float(z.mean())) < 0.01 and abs(float(z.var()) - 1) < 0.02
    assert abs(float((z**3).mean()) - 2 / math.sqrt(k0)) < 0.1 * 2 / math.sqrt(k0)
    sampler = AncestralSampler(d)
    x_T = d.prior_sample((20_000, 1), torch.Generator().manual_seed(1))
    x = sample_loop(predict, sampler, x_T, sampler.timesteps, generator=torch.Generator().manual_seed(2))
    assert abs(float(x.var()) / s2 - 1) < 0.1
    with pytest.raises(ConfigError, match="stochastic DDIM is derived for Gaussian noise"):
        DDIMSampler(d, eta=1.0, steps=10)
    DDIMSampler(d, eta=0.0, steps=10)


@pytest.mark.parametrize("noise,message", [
    ({"name": "gamma", "theta0": 0.0}, "noise.theta0=0.0 is invalid"),
    ({"name": "gamma", "theta0": float("inf")}, "noise.theta0=inf is invalid"),
    ({"name": "poisson"}, "noise=.*poisson.*is invalid: expected noise=gaussian"),
    ({"name": "gaussian", "theta0": 1.0}, "is invalid: expected noise=gaussian \\(no settings\\)"),
])
def test_bad_noise_settings(noise, message):
    with pytest.raises(ConfigError, match=message):
        GaussianDiffusion.from_schedule("linear", 100, noise=noise)


def test_diffusion_gans_and_the_continuous_process_refuse_gamma(gamma):
    from siddm_lab.diffusion import CosineContinuousTime

    with pytest.raises(ConfigError, match="Gamma noise is a DDPM option"):
        CosineContinuousTime(4, noise={"name": "gamma", "theta0": 0.1})
    with pytest.raises(ConfigError, match="noise=gamma is a DDPM option"):
        gamma.q_sample_pairs(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))


def test_train_and_sample_a_gamma_ddpm_and_refuse_it_for_siddm(tmp_path):
    """noise=gamma end to end: training regresses the Gamma ε, the checkpoint reloads as a GammaDiffusion and
    samples with ancestral Gamma steps; a diffusion GAN with Gamma noise is a one-line config error."""
    from siddm_lab.models.loading import load_model
    from tests.helpers import run_train
    from tests.test_sample import run_sample
    from tests.test_train import TINY_TOY

    out = tmp_path / "gamma"
    run_train(TINY_TOY + ["noise=gamma", "noise.theta0=0.01", "trainer.max_steps=20", "trainer.val_check_interval=20",
                          "model.eval_num_samples=0"], out)
    model, cfg = load_model(out / "checkpoints" / "last.ckpt")
    assert isinstance(model.diffusion, GammaDiffusion) and model.diffusion.theta0 == 0.01
    info = run_sample([f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "sampler=ddpm", "num_samples=64",
                       "batch_size=64"], tmp_path / "sample")
    assert info["nfe"] == model.diffusion.num_timesteps and math.isfinite(info["fd_2d"])

def test_a_diffusion_gan_with_gamma_noise_is_a_one_line_error(capsys):
    from hydra.utils import instantiate

    from siddm_lab.cli.common import user_errors
    from tests.helpers import compose_cfg

    cfg = compose_cfg(["model=siddm", "net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4", "noise=gamma"])
    with pytest.raises(SystemExit) as e:
        user_errors(lambda: instantiate(cfg.model))()
    assert e.value.code == 2
    assert "noise=gamma: the diffusion GANs' objectives" in capsys.readouterr().err
