"""Gamma noise (Gamma-DDPM): forward marginals against closed forms (Monte Carlo), the shape constants,
reproducible draws, ancestral sampling with Gamma noise, and the options that refuse it."""

from __future__ import annotations

import math

import pytest
import torch

from siddm_lab.diffusion import (
    AncestralSampler,
    DDIMSampler,
    Denoiser,
    GaussianDiffusion,
    RandomSource,
    check_sampler,
    sample_loop,
)
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


@pytest.mark.parametrize("noise", [None, {"name": "gamma", "theta0": 0.01}])
def test_noise_like_draws_from_the_global_rng_by_default_for_every_process(noise):
    # one default for the shared signature: callers that pass no source get the global RNG, so a reseed
    # reproduces the draw and a RandomSource of one generator leaves the global RNG alone
    d = GaussianDiffusion.from_schedule("linear", 100, noise=noise)
    x, t = torch.zeros(64, 3), torch.full((64,), 50, dtype=torch.long)
    torch.manual_seed(7)
    a = d.noise_like(x, t)
    torch.manual_seed(7)
    torch.testing.assert_close(a, d.noise_like(x, t))
    assert not torch.equal(a, d.noise_like(x, t))
    state = torch.random.get_rng_state()
    b = d.noise_like(x, t, RandomSource.single(torch.Generator().manual_seed(7)))
    assert torch.equal(state, torch.random.get_rng_state())
    torch.testing.assert_close(b, d.noise_like(x, t, RandomSource.single(torch.Generator().manual_seed(7))))


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
    # over a skip t -> s the step noise has the shape the forward chain adds between them, k̄_t − k̄_s
    z = d.step_noise(torch.zeros(200_000, 1), 6, torch.Generator().manual_seed(0), s=1).squeeze(1)
    k_skip = float(d.gamma_k_cumsum[6] - d.gamma_k_cumsum[1])
    assert abs(float((z**3).mean()) - 2 / math.sqrt(k_skip)) < 0.1 * 2 / math.sqrt(k_skip)
    assert k_skip > 3 * float(d.gamma_k[6])  # not the single step's k_6
    sampler = AncestralSampler(d)
    x_T = d.prior_sample((20_000, 1), torch.Generator().manual_seed(1))
    x = sample_loop(predict, sampler, x_T, sampler.timesteps, generator=torch.Generator().manual_seed(2))
    assert abs(float(x.var()) / s2 - 1) < 0.1
    # stochastic DDIM's noise is derived for Gaussian noise: refused for this model, deterministic DDIM is not
    model = Denoiser(d, x0_eps=predict)
    with pytest.raises(ConfigError, match=r"sampler=ddim needs Gaussian noise \(its process has gamma noise\).*"
                                          r"fit it: ddpm, ddim \(with other settings\)"):
        check_sampler(DDIMSampler(d, eta=1.0, steps=10), model)
    check_sampler(DDIMSampler(d, eta=0.0, steps=10), model)


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
                          "callbacks.evaluation.num_samples=0"], out)
    model, cfg = load_model(out / "checkpoints" / "last.ckpt")
    assert isinstance(model.diffusion, GammaDiffusion) and model.diffusion.theta0 == 0.01
    info = run_sample([f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "sampler=ddpm", "num_samples=64",
                       "batch_size=64"], tmp_path / "sample")
    assert info["nfe"] == model.diffusion.num_timesteps and math.isfinite(info["fd_2d"])
    from siddm_lab.diffusion import GammaDDIMSampler

    info = run_sample([f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "sampler=gamma_ddim", "num_samples=64",
                       "batch_size=64"], tmp_path / "sample_gamma_ddim")
    plan = GammaDDIMSampler(model.diffusion, constraint="doubling").timesteps
    assert info["sampler"] == "gamma_ddim" and info["nfe"] == len(plan) and math.isfinite(info["fd_2d"])
    assert info["subsequence"] == "gamma_doubling" and info["constraint"] == "doubling"

def test_a_diffusion_gan_with_gamma_noise_is_a_one_line_error(capsys):
    from hydra.utils import instantiate

    from siddm_lab.utils.entry import user_errors
    from tests.helpers import compose_cfg

    cfg = compose_cfg(["model=siddm", "net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4", "noise=gamma"])
    with pytest.raises(SystemExit) as e:
        user_errors(lambda: instantiate(cfg.model))()
    assert e.value.code == 2
    assert "noise=gamma: the diffusion GANs' objectives" in capsys.readouterr().err


# --- the Gamma posterior sampler (sampler=gamma_ddim) and the report's Gamma-DDIM constraint -------------------

def _one_step(process, sampler, x0: float, t: int, s: int, n: int, seed: int = 0) -> torch.Tensor:
    """x_s from one sampler step t -> s with the exact x0, starting from x_t ~ q(x_t | x0)."""
    x0s = torch.full((n, 1), x0, dtype=torch.float64)
    tt = torch.full((n,), t)
    torch.manual_seed(seed)
    x_t = process.q_sample(x0s, tt, process.noise_like(x0s, tt))
    g = torch.Generator().manual_seed(seed + 1)
    return sampler.step(x_t, t, s, x0s, None, sampler.step_noise(x_t, t, s, g)).squeeze(1)


@pytest.mark.parametrize("t,s", [(1, 0), (30, 3), (999, 30), (999, 0)])
def test_the_gamma_posterior_step_keeps_the_gamma_marginal(gamma, t, s):
    """One step t -> s from x_t ~ q(x_t | x0) with the true x0 lands on q(x_s | x0): mean sqrt(ᾱ_s) x0,
    variance 1 − ᾱ_s and the Gamma skewness 2/sqrt(k̄_s), also across a skip of 969 timesteps, where
    Nachmani et al.'s ancestral step (DDPM's moments, step noise of shape k_t) does not keep the skewness."""
    from siddm_lab.diffusion import GammaDDIMSampler

    n = 400_000
    x = _one_step(gamma, GammaDDIMSampler(gamma), 0.7, t, s, n)
    ab, k = float(gamma.alphas_cumprod[s]), float(gamma.gamma_k_cumsum[s])
    mean, var = float(x.mean()), float(x.var())
    skew = float(((x - mean) ** 3).mean()) / var**1.5
    assert abs(mean - math.sqrt(ab) * 0.7) < 4 * math.sqrt((1 - ab) / n) + 1e-9
    assert abs(var / (1 - ab) - 1) < 0.015
    assert abs(skew - 2 / math.sqrt(k)) < 0.03 + 0.05 * 2 / math.sqrt(k)
    if (t, s) == (999, 0):
        anc = AncestralSampler(gamma)
        x0s = torch.full((n, 1), 0.7, dtype=torch.float64)
        tt = torch.full((n,), t)
        torch.manual_seed(0)
        x_t = gamma.q_sample(x0s, tt, gamma.noise_like(x0s, tt))
        y = anc.step(x_t, t, s, x0s, None, anc.step_noise(x_t, t, s)).squeeze(1)
        skew_anc = float(((y - y.mean()) ** 3).mean()) / float(y.var()) ** 1.5
        assert skew > 1.5 and abs(skew_anc) < 0.2


def test_the_gamma_posterior_mean_is_the_ddpm_posterior_mean(gamma):
    """With B at its mean k̄_s/k̄_t the step is DDPM's posterior mean μ̃(x_t, x0) exactly (hand algebra in
    gamma.py's docstring), over a skip and over one step."""
    from siddm_lab.diffusion import GammaDDIMSampler

    sampler, anc = GammaDDIMSampler(gamma), AncestralSampler(gamma)
    x0 = torch.linspace(-1, 1, 7, dtype=torch.float64)
    for t, s in [(500, 499), (700, 200), (10, 0)]:
        sd = float(1 - gamma.alphas_cumprod[t]) ** 0.5
        x_t = float(gamma.alphas_cumprod[t]) ** 0.5 * x0 + sd * torch.linspace(-0.9, 2.0, 7, dtype=torch.float64)
        a, b = sampler.shapes(t, s)
        mean_step = sampler.step(x_t, t, s, x0, None, torch.full_like(x_t, a / (a + b)))
        c_x0, c_xt, _ = anc.coefficients(t, s)
        torch.testing.assert_close(mean_step, c_x0 * x0 + c_xt * x_t, rtol=1e-9, atol=1e-9)
    assert torch.equal(sampler.step(x_t, 10, -1, x0, None, None), x0)
    # an x_t below the noise's support given x0' (ḡ_t < 0) is clamped onto it: x_s at its support's minimum
    ab_t, ab_s = float(gamma.alphas_cumprod[10]), float(gamma.alphas_cumprod[0])
    low = math.sqrt(ab_t) * x0 - 5.0
    x_s = sampler.step(low, 10, 0, x0, None, torch.full_like(x0, 0.5))
    kb_s, th_s = float(gamma.gamma_k_cumsum[0]), math.sqrt(ab_s) * gamma.theta0
    torch.testing.assert_close(x_s, math.sqrt(ab_s) * x0 - kb_s * th_s)


def test_the_report_constraint_builds_halving_plans_and_refuses_what_it_cannot():
    """constraint=doubling: the plan from T-1 halves k̄ at every step (k_{t+1} = Σ_{i≤t} k_i); it allows only
    ~log2(k̄_{T-1}/k̄_0) steps (24 on linear T = 1000); more steps, an explicit plan that breaks the
    constraint, Gaussian noise and unknown options are refused with the allowed values."""
    from siddm_lab.diffusion import GammaDDIMSampler

    process = GaussianDiffusion.from_schedule("linear", 1000, noise={"name": "gamma", "theta0": 0.001})
    kbar = process.gamma_k_cumsum.double()
    sampler = GammaDDIMSampler(process, constraint="doubling")
    ts = sampler.timesteps
    assert ts[0] == 999 and sampler.subsequence == "gamma_doubling" and sampler.nfe == len(ts) == 24
    assert 2 ** (len(ts) - 1) <= float(kbar[-1] / kbar[0]) < 2 ** (len(ts) + 4)
    for a, b in zip(ts, ts[1:]):
        assert abs(float(kbar[a] / kbar[b]) / 2 - 1) <= 0.05
    assert GammaDDIMSampler(process, constraint="doubling", steps=5).timesteps == ts[:5]
    with pytest.raises(ConfigError, match=r"sampler.steps=30 is impossible .* allowed: 1..24"):
        GammaDDIMSampler(process, constraint="doubling", steps=30)
    with pytest.raises(ConfigError, match=r"breaks the Gamma-DDIM constraint .* at the step 999 -> 899: .* = 6.8"):
        GammaDDIMSampler(process, constraint="doubling", subsequence={"name": "explicit", "timesteps": [999, 899]})
    ok = GammaDDIMSampler(process, constraint="doubling", subsequence={"name": "explicit", "timesteps": ts[:3]})
    assert ok.timesteps == ts[:3]
    with pytest.raises(ConfigError, match="builds its own plan"):
        GammaDDIMSampler(process, constraint="doubling", subsequence={"name": "quadratic"})
    with pytest.raises(ConfigError, match="allowed: null, doubling"):
        GammaDDIMSampler(process, constraint="halving")
    with pytest.raises(ConfigError, match=r"constraint_rtol=0 is invalid"):
        GammaDDIMSampler(process, constraint_rtol=0)
    with pytest.raises(ConfigError, match="sampler=gamma_ddim samples Gamma noise"):
        GammaDDIMSampler(GaussianDiffusion.from_schedule("linear", 100))
    any_plan = GammaDDIMSampler(process, steps=10)  # constraint=null: the exact posterior on any plan
    assert any_plan.nfe == 10 and any_plan.settings()["constraint"] is None


def test_gamma_ddim_samples_the_gamma_toy_end_to_end():
    """A full chain with an exact denoiser of a two-point dataset: the sampler from the Gamma prior lands on
    the data, reproducibly with the generator."""
    from siddm_lab.diffusion import GammaDDIMSampler

    process = GaussianDiffusion.from_schedule("linear", 1000, noise={"name": "gamma", "theta0": 0.001})
    sampler = GammaDDIMSampler(process, constraint="doubling")
    ab = process.alphas_cumprod.double()

    def predict(x_t, t):  # the exact posterior mean of x0 in {-1, +1} would need the Gamma density: use x0 = sign
        x0 = torch.sign(x_t.double()).clamp(-1, 1)
        x0[x0 == 0] = 1
        a = ab[t].view(-1, 1)
        return x0.to(x_t.dtype), ((x_t.double() - a.sqrt() * x0) / (1 - a).sqrt()).to(x_t.dtype)

    x_T = process.prior_sample((256, 1), torch.Generator().manual_seed(0))
    out1 = sampler.sample(predict, x_T, torch.Generator().manual_seed(1))
    out2 = sampler.sample(predict, x_T, torch.Generator().manual_seed(1))
    assert torch.equal(out1, out2) and set(out1.unique().tolist()) <= {-1.0, 1.0}
