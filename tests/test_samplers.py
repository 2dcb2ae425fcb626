"""Samplers (siddm_lab.diffusion.samplers) against the posterior and diffusers' DDPMScheduler.

The oracle is a hand loop of diffusers' DDPMScheduler.step (clip_sample=False, epsilon
prediction). Its step draws noise with ``randn_tensor`` and has no noise argument, so the
noise is either handed in by monkeypatching ``scheduling_ddpm.randn_tensor`` or drawn from a
torch.Generator seeded like ours (both draw torch.randn(shape) once per non-final step).
Float64 runs put our float64 schedule into the scheduler (tolerance 1e-10); float32 runs use
diffusers' own float32 schedule on both sides (tolerance 1e-5).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers import scheduling_ddpm

from siddm_lab.diffusion.gaussian import GaussianDiffusion
from siddm_lab.diffusion.samplers import (
    AncestralSampler,
    full_timesteps,
    sample_loop,
    uniform_timesteps,
    validate_timesteps,
)
from siddm_lab.errors import ConfigError
from tests.helpers import eps_predictor, use_float64_schedule

F64 = torch.float64
VARIANCES = ("fixed_small", "fixed_large")


@pytest.fixture(scope="module")
def diff() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("linear", 1000)


def _hf64(diffusion: GaussianDiffusion, variance_type: str) -> DDPMScheduler:
    s = DDPMScheduler(
        num_train_timesteps=diffusion.num_timesteps,
        variance_type=variance_type,
        clip_sample=False,
        prediction_type="epsilon",
    )
    return use_float64_schedule(s, diffusion)


class LinearEps:
    """A fixed 'network': ε(x, t) = tanh(x W + (t/T) b), bounded, time dependent."""

    def __init__(self, dim: int, T: int, dtype=F64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.W = (0.5 * torch.randn(dim, dim, generator=g, dtype=F64)).to(dtype)
        self.b = torch.randn(dim, generator=g, dtype=F64).to(dtype)
        self.T = T

    def _t(self, x, t):
        if isinstance(t, torch.Tensor) and t.dim() == 1:
            return t.to(x.device)
        return torch.full((x.shape[0],), int(t), device=x.device)

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        tt = self._t(x, t).to(x.dtype)[:, None]
        return torch.tanh(x @ self.W + tt / self.T * self.b)


class GaussianEps(LinearEps):
    """Near-optimal ε for data ~ N(0, σ²I): sqrt(1-ᾱ)x/(ᾱσ²+1-ᾱ), plus a small learned-looking
    perturbation. Keeps the sampled values O(1), so float32 round-off stays at float32 level."""

    def __init__(self, dim, alphas_cumprod, dtype=F64, seed=0, sigma=0.5):
        super().__init__(dim, len(alphas_cumprod), dtype, seed)
        self.ab = alphas_cumprod.to(F64)
        self.sigma2 = sigma**2

    def __call__(self, x, t):
        ab = self.ab[self._t(x, t).long()][:, None]
        gain = ((1 - ab).sqrt() / (ab * self.sigma2 + 1 - ab)).to(x.dtype)
        return gain * x + 0.1 * super().__call__(x, t)


_predictor = eps_predictor


@pytest.fixture
def hf_noise(monkeypatch):
    """Feed diffusers' step the noise of our choosing (one draw per step with t > 0)."""
    box = {"noise": []}

    def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
        noise = box["noise"].pop(0)
        assert tuple(noise.shape) == tuple(shape)
        return noise.to(dtype)

    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", fake_randn)
    return box


def _our_loop(diffusion, variance_type, model, x, ts, noises):
    sampler = AncestralSampler(diffusion, variance_type)
    predict = _predictor(diffusion, model)
    for i, (t, s) in enumerate(zip(ts, ts[1:] + [-1])):
        tb = torch.full((x.shape[0],), t, dtype=torch.long)
        x0, eps = predict(x, tb)
        x = sampler.step(x, t, s, x0, eps, noise=noises[i] if s >= 0 else None)
    return x


def _hf_loop(sched, model, x, ts, hf_noise=None, noises=None, generator=None):
    if ts != full_timesteps(sched.config.num_train_timesteps):
        sched.set_timesteps(timesteps=ts)
    if noises is not None:
        hf_noise["noise"] = [n for n, t in zip(noises, ts) if t > 0]
    for t in ts:
        x = sched.step(model(x, t), t, x, generator=generator).prev_sample
    if noises is not None:
        assert hf_noise["noise"] == []
    return x


# ----------------------------------------------------------------------------- coefficients
@pytest.mark.parametrize("variance_type", VARIANCES)
def test_consecutive_coefficients_equal_posterior(diff, variance_type):
    sampler = AncestralSampler(diff, variance_type)
    for t in list(range(1, 20)) + list(range(20, 1000, 37)) + [999]:
        c_x0, c_xt, std = sampler.coefficients(t, t - 1)
        assert c_x0 == pytest.approx(diff.posterior_mean_coef1[t].item(), rel=1e-12)
        assert c_xt == pytest.approx(diff.posterior_mean_coef2[t].item(), rel=1e-12)
        var = diff.posterior_variance[t] if variance_type == "fixed_small" else diff.betas[t]
        assert std**2 == pytest.approx(var.item(), rel=1e-12)
    # last step to the clean data: mean = x0', no noise
    c_x0, c_xt, std = sampler.coefficients(0, -1)
    assert c_x0 == pytest.approx(1.0, abs=1e-12)
    assert c_xt == 0.0 and std == 0.0


@pytest.mark.parametrize("variance_type", VARIANCES)
def test_fixed_variances_match_diffusers(diff, variance_type):
    sampler = AncestralSampler(diff, variance_type)
    hf = _hf64(diff, variance_type)
    for t in (1, 2, 50, 500, 999):
        _, _, std = sampler.coefficients(t, t - 1)
        assert std**2 == pytest.approx(hf._get_variance(t).item(), rel=1e-12)
    assert sampler.coefficients(1, 0)[2] ** 2 == pytest.approx(
        (diff.betas[1] * (1 - diff.alphas_cumprod[0]) / (1 - diff.alphas_cumprod[1])).item()
        if variance_type == "fixed_small"
        else diff.betas[1].item(),
        rel=1e-12,
    )


@pytest.mark.parametrize("variance_type", VARIANCES)
def test_skip_coefficients_closed_form(diff, variance_type):
    sampler = AncestralSampler(diff, variance_type)
    ab = diff.alphas_cumprod
    for t, s in [(999, 899), (500, 3), (100, 0), (37, 36), (999, 0)]:
        ab_t, ab_s = ab[t].item(), ab[s].item()
        beta = 1 - ab_t / ab_s
        c_x0, c_xt, std = sampler.coefficients(t, s)
        assert c_x0 == pytest.approx(ab_s**0.5 * beta / (1 - ab_t), rel=1e-12)
        assert c_xt == pytest.approx((1 - beta) ** 0.5 * (1 - ab_s) / (1 - ab_t), rel=1e-12)
        var = (1 - ab_s) / (1 - ab_t) * beta if variance_type == "fixed_small" else beta
        assert std**2 == pytest.approx(var, rel=1e-12)
    assert not sampler.coefficients(999, 899)[0] == pytest.approx(sampler.coefficients(999, 998)[0])


def test_skip_coefficients_are_posterior_of_the_sub_chain(diff):
    """A skip t -> s is the exact posterior step of the chain restricted to the sub-sequence."""
    ts = [999, 700, 350, 101, 37, 5, 0]
    asc = ts[::-1]
    ab = diff.alphas_cumprod[asc]
    sub = GaussianDiffusion(1 - ab / torch.cat([torch.ones(1, dtype=F64), ab[:-1]]))
    sampler = AncestralSampler(diff, "fixed_small")
    for k in range(1, len(asc)):
        c_x0, c_xt, std = sampler.coefficients(asc[k], asc[k - 1])
        assert c_x0 == pytest.approx(sub.posterior_mean_coef1[k].item(), rel=1e-12)
        assert c_xt == pytest.approx(sub.posterior_mean_coef2[k].item(), rel=1e-12)
        assert std**2 == pytest.approx(sub.posterior_variance[k].item(), rel=1e-12)


@pytest.mark.parametrize("variance_type", VARIANCES)
def test_skip_variances_match_diffusers_custom_timesteps(diff, variance_type):
    ts = [999, 700, 350, 101, 37, 5, 0]
    hf = _hf64(diff, variance_type)
    hf.set_timesteps(timesteps=ts)
    sampler = AncestralSampler(diff, variance_type)
    for t, s in zip(ts[:-1], ts[1:]):
        assert hf.previous_timestep(t).item() == s
        assert sampler.coefficients(t, s)[2] ** 2 == pytest.approx(
            hf._get_variance(t).item(), rel=1e-12
        )


def test_step_applies_coefficients(diff):
    g = torch.Generator().manual_seed(0)
    x_t, x0, z = (torch.randn(3, 5, generator=g, dtype=F64) for _ in range(3))
    sampler = AncestralSampler(diff, "fixed_small")
    c_x0, c_xt, std = sampler.coefficients(400, 300)
    out = sampler.step(x_t, 400, 300, x0, None, noise=z)
    torch.testing.assert_close(out, c_x0 * x0 + c_xt * x_t + std * z, rtol=0, atol=1e-15)
    # the final step ignores noise
    out = sampler.step(x_t, 0, -1, x0, None, noise=z)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-12)
    # without explicit noise it draws from the global RNG
    torch.manual_seed(5)
    a = sampler.step(x_t, 400, 300, x0, None)
    torch.manual_seed(5)
    torch.testing.assert_close(
        a, sampler.step(x_t, 400, 300, x0, None, noise=torch.randn_like(x_t))
    )


def test_invalid_variance_type():
    with pytest.raises(ConfigError, match="variance_type.*fixed_small, fixed_large"):
        AncestralSampler(GaussianDiffusion.from_schedule("linear", 10), "learned")


# ----------------------------------------------------------------------------- full loops
@pytest.mark.parametrize("variance_type", VARIANCES)
def test_full_loop_matches_diffusers_float64_given_noise(diff, hf_noise, variance_type):
    T, dim, B = 1000, 6, 4
    model = LinearEps(dim, T)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(B, dim, generator=g, dtype=F64)
    noises = [torch.randn(B, dim, generator=g, dtype=F64) for _ in range(T)]
    ts = full_timesteps(T)
    ours = _our_loop(diff, variance_type, model, x_T, ts, noises)
    theirs = _hf_loop(_hf64(diff, variance_type), model, x_T, ts, hf_noise, noises)
    assert ours.dtype == F64
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    # the two variance choices give different samples from the same noise
    other = "fixed_large" if variance_type == "fixed_small" else "fixed_small"
    assert not torch.allclose(ours, _our_loop(diff, other, model, x_T, ts, noises), atol=1e-3)


@pytest.mark.parametrize("variance_type", VARIANCES)
@pytest.mark.parametrize("T", [100, 1000])
def test_full_loop_float32_matches_diffusers(hf_noise, variance_type, T):
    """float32 sampling with float64 constants stays within 1e-5 of the float64 oracle.

    diffusers' own float32 loop is further off (up to ~1e-4 here: it forms β_t as
    1 - ᾱ_t/ᾱ_{t-1} in float32, which cancels for small β), so the float32 comparison with it
    is looser and the tight one is against diffusers' step run in float64.
    """
    dim, B = 6, 4
    sched = DDPMScheduler(
        num_train_timesteps=T,
        variance_type=variance_type,
        clip_sample=False,
        prediction_type="epsilon",
    )
    diffusion = GaussianDiffusion(sched.betas.double())  # diffusers' (float32) betas
    model32 = GaussianEps(dim, diffusion.alphas_cumprod, dtype=torch.float32)
    model64 = GaussianEps(dim, diffusion.alphas_cumprod, dtype=F64)
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(B, dim, generator=g)
    noises = [torch.randn(B, dim, generator=g) for _ in range(T)]
    ts = full_timesteps(T)
    ours = _our_loop(diffusion, variance_type, model32, x_T, ts, noises)
    assert ours.dtype == torch.float32
    assert ours.abs().max() < 5  # a well-conditioned run: values O(σ)
    oracle64 = _hf_loop(
        _hf64(diffusion, variance_type),
        model64,
        x_T.double(),
        ts,
        hf_noise,
        [n.double() for n in noises],
    )
    torch.testing.assert_close(ours.double(), oracle64, rtol=0, atol=1e-5)
    hf32 = _hf_loop(sched, model32, x_T, ts, hf_noise, noises)
    assert hf32.dtype == torch.float32
    torch.testing.assert_close(ours, hf32, rtol=0, atol=3e-4)


@pytest.mark.parametrize("variance_type", VARIANCES)
def test_sample_loop_matches_diffusers_with_same_generator(diff, variance_type):
    """sample_loop draws its noise like diffusers' step does: same seed, same samples."""
    T, B = 1000, 2
    model = LinearEps(4 * 2 * 2, T)

    def model4d(x, t):  # 4-D images through the flat linear model
        return model(x.reshape(x.shape[0], -1), t).reshape(x.shape)

    x_T = torch.randn(B, 4, 2, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    sampler = AncestralSampler(diff, variance_type)
    ours = sample_loop(
        _predictor(diff, model4d), sampler, x_T, full_timesteps(T), torch.Generator().manual_seed(7)
    )
    theirs = _hf_loop(
        _hf64(diff, variance_type),
        model4d,
        x_T,
        full_timesteps(T),
        generator=torch.Generator().manual_seed(7),
    )
    assert ours.shape == x_T.shape
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("variance_type", VARIANCES)
@pytest.mark.parametrize(
    "ts",
    [uniform_timesteps(1000, 10), uniform_timesteps(1000, 3), [999, 700, 350, 101, 37, 5, 0]],
    ids=["uniform10", "uniform3", "irregular"],
)
def test_skip_sequence_matches_diffusers_custom_timesteps(diff, variance_type, ts):
    dim, B = 5, 3
    model = LinearEps(dim, 1000, seed=4)
    x_T = torch.randn(B, dim, generator=torch.Generator().manual_seed(4), dtype=F64)
    sampler = AncestralSampler(diff, variance_type)
    ours = sample_loop(_predictor(diff, model), sampler, x_T, ts, torch.Generator().manual_seed(11))
    hf = _hf64(diff, variance_type)
    theirs = _hf_loop(hf, model, x_T, ts, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


def test_skip_sequence_given_noise_float64(diff, hf_noise):
    ts = uniform_timesteps(1000, 50)
    dim, B = 3, 2
    model = LinearEps(dim, 1000, seed=5)
    g = torch.Generator().manual_seed(5)
    x_T = torch.randn(B, dim, generator=g, dtype=F64)
    noises = [torch.randn(B, dim, generator=g, dtype=F64) for _ in ts]
    ours = _our_loop(diff, "fixed_small", model, x_T, ts, noises)
    theirs = _hf_loop(_hf64(diff, "fixed_small"), model, x_T, ts, hf_noise, noises)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


def test_uniform_timesteps_equal_diffusers_leading_spacing():
    def leading(T, S):
        hf = DDPMScheduler(num_train_timesteps=T, timestep_spacing="leading", steps_offset=0)
        hf.set_timesteps(S)
        return hf.timesteps.tolist()

    for T, S in [(1000, 10), (1000, 50), (1000, 1000), (4, 2)]:
        assert uniform_timesteps(T, S) == leading(T, S)
    # T % S != 0: range(0, T, T // S) keeps one more (larger) step than diffusers' S steps
    assert uniform_timesteps(100, 7) == [98] + leading(100, 7)


# ----------------------------------------------------------------------------- toy-data exactness
@pytest.mark.parametrize("ts", [[3, 2, 1, 0], [3, 1], [2]])
def test_final_step_returns_x0_prediction(ts):
    """The last step goes to the clean data (s = -1): it returns x0' and adds no noise, also for
    a sequence that ends above t = 0 (diffusers would add noise there, as t > 0)."""
    d = GaussianDiffusion.from_schedule("ddgan_vp", 4)
    c = torch.tensor([[1.5, -0.5]], dtype=F64).repeat(8, 1)
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for vt in VARIANCES:
        out = sample_loop(
            lambda x, t: (c, d.predict_eps_from_x0(x, t, c)),
            AncestralSampler(d, vt),
            x_T,
            ts,
            torch.Generator().manual_seed(1),
        )
        torch.testing.assert_close(out, c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("t,s", [(3, 2), (3, 1), (2, 0)])
def test_exact_x0_gives_forward_marginals(t, s):
    """Data = point mass at c: with x0' = c the fixed_small step maps q(x_t|c) onto q(x_s|c)."""
    d = GaussianDiffusion.from_schedule("ddgan_vp", 4)
    n, c = 200_000, 1.3
    g = torch.Generator().manual_seed(t * 10 + s)
    x0 = torch.full((n, 1), c, dtype=F64)
    x_t = d.q_sample(x0, torch.full((n,), t), torch.randn(n, 1, generator=g, dtype=F64))
    x_s = AncestralSampler(d, "fixed_small").step(
        x_t, t, s, x0, None, noise=torch.randn(n, 1, generator=g, dtype=F64)
    )
    ab_s = d.alphas_cumprod[s].item()
    assert x_s.mean().item() == pytest.approx(c * ab_s**0.5, abs=0.01)
    assert x_s.var().item() == pytest.approx(1 - ab_s, rel=0.02)


# ----------------------------------------------------------------------------- timestep utilities
def test_full_timesteps():
    assert full_timesteps(5) == [4, 3, 2, 1, 0]
    assert full_timesteps(1) == [0]


def test_uniform_timesteps_values():
    assert uniform_timesteps(1000, 10) == list(range(0, 1000, 100))[::-1]
    assert uniform_timesteps(1000, 10) == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert uniform_timesteps(1000, 1000) == full_timesteps(1000)
    assert uniform_timesteps(1000, 1) == [0]
    assert uniform_timesteps(4, 4) == [3, 2, 1, 0]
    # ermongroup skip = T // S: T not a multiple of S gives a few extra steps
    assert uniform_timesteps(1000, 3) == [999, 666, 333, 0]
    assert uniform_timesteps(10, 4) == [8, 6, 4, 2, 0]


@pytest.mark.parametrize("S", [0, -1, 1001, 5000])
def test_uniform_timesteps_rejects_bad_S(S):
    with pytest.raises(ConfigError, match="1..1000"):
        uniform_timesteps(1000, S)


def test_validate_timesteps_accepts_and_normalises():
    assert validate_timesteps([9, 5, 0], 10) == [9, 5, 0]
    out = validate_timesteps(torch.tensor([9, 5, 0]), 10)
    assert out == [9, 5, 0] and all(type(v) is int for v in out)
    assert validate_timesteps(range(9, -1, -1), 10) == full_timesteps(10)


@pytest.mark.parametrize(
    "ts,match",
    [
        ([], "empty"),
        ([10, 5, 0], "0..9"),
        ([9, 5, -1], "0..9"),
        ([5, 5, 0], "strictly decreasing"),
        ([0, 5, 9], "strictly decreasing"),
        ([9, 3, 4, 0], "strictly decreasing"),
    ],
)
def test_validate_timesteps_errors(ts, match):
    with pytest.raises(ConfigError, match=match):
        validate_timesteps(ts, 10)


def test_sample_loop_validates_before_calling_the_model(diff):
    calls = []

    def predict(x, t):
        calls.append(t)
        return x, x

    with pytest.raises(ConfigError):
        sample_loop(predict, AncestralSampler(diff), torch.zeros(1, 2), [0, 5])
    assert calls == []


def test_sample_loop_calls_and_determinism(diff):
    calls = []
    model = LinearEps(3, 1000)
    base = _predictor(diff, model)

    def predict(x, t):
        calls.append(t.clone())
        return base(x, t)

    ts = uniform_timesteps(1000, 20)
    x_T = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    sampler = AncestralSampler(diff, "fixed_large")
    rng_state = torch.get_rng_state()
    a = sample_loop(predict, sampler, x_T, ts, torch.Generator().manual_seed(42))
    assert torch.equal(torch.get_rng_state(), rng_state)  # only the given generator is used
    # one network call per timestep, each with a [B] long tensor of that timestep
    assert [int(c[0]) for c in calls] == ts
    assert all(c.shape == (5,) and c.dtype == torch.long and (c == c[0]).all() for c in calls)
    # the generator is advanced by exactly one randn(x.shape) per non-final step (the last step
    # adds no noise), as diffusers' DDPMScheduler does
    g = torch.Generator().manual_seed(42)
    sample_loop(predict, sampler, x_T, ts, g)
    ref = torch.Generator().manual_seed(42)
    for _ in ts[1:]:
        torch.randn(x_T.shape, generator=ref, dtype=x_T.dtype)
    assert torch.equal(g.get_state(), ref.get_state())
    b = sample_loop(predict, sampler, x_T, ts, torch.Generator().manual_seed(42))
    assert torch.equal(a, b)
    c = sample_loop(predict, sampler, x_T, ts, torch.Generator().manual_seed(43))
    assert not torch.allclose(a, c)
    assert torch.isfinite(a).all()
