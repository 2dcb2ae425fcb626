"""DDIM (siddm_lab.diffusion.samplers.DDIMSampler), inversion and slerp against diffusers and the
reference code of ermongroup/ddim (REFERENCES §2).

Oracles: diffusers' DDIMScheduler (leading/trailing spacing, clip_sample=False, epsilon prediction),
whose ``step`` takes the noise as ``variance_noise=``; hand-written transcriptions of
ermongroup/ddim ``generalized_steps`` and ``ddpm_steps``; the closed-form DDIM update with the
actual next element of the sequence. float64 runs put our float64 ᾱ into the scheduler (1e-10);
float32 runs use diffusers' own float32 schedule on its side (1e-5).
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from siddm_lab.diffusion import subsequences as ss
from siddm_lab.diffusion.gaussian import GaussianDiffusion
from siddm_lab.diffusion.samplers import AncestralSampler, DDIMSampler, ddim_invert, sample_loop, slerp
from siddm_lab.errors import ConfigError
from tests.helpers import eps_predictor, use_float64_schedule

F64 = torch.float64
T = 1000


@pytest.fixture(scope="module")
def diff() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("linear", T)


def _hf(spacing: str = "leading", diffusion: GaussianDiffusion | None = None) -> DDIMScheduler:
    """diffusers' DDIM; with ``diffusion`` its ᾱ (and ᾱ_{-1} = 1) are replaced by our float64 ones."""
    s = DDIMScheduler(
        num_train_timesteps=T,
        beta_schedule="linear",
        timestep_spacing=spacing,
        steps_offset=0,
        set_alpha_to_one=True,
        clip_sample=False,
        prediction_type="epsilon",
    )
    if diffusion is not None:
        use_float64_schedule(s, diffusion)
    return s


class GaussianEps:
    """A fixed deterministic ε-'network': the exact ε for data ~ N(0, σ²I), sqrt(1-ᾱ)x/(ᾱσ²+1-ᾱ),
    plus a time-dependent nonlinear perturbation 0.1·tanh(xW + (t/T)b). Keeps values O(1)."""

    def __init__(self, alphas_cumprod: torch.Tensor, dim: int, seed: int = 0, sigma: float = 0.5, pert: float = 0.1):
        g = torch.Generator().manual_seed(seed)
        self.W = 0.5 * torch.randn(dim, dim, generator=g, dtype=F64)
        self.b = torch.randn(dim, generator=g, dtype=F64)
        self.ab = alphas_cumprod.to(F64)
        self.sigma2 = sigma**2
        self.pert = pert

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t).reshape(-1).expand(x.shape[0]).long()
        ab = self.ab[t][:, None]
        gain = ((1 - ab).sqrt() / (ab * self.sigma2 + 1 - ab)).to(x.dtype)
        tt = (t.to(F64) / len(self.ab))[:, None]
        return gain * x + self.pert * torch.tanh(x @ self.W.to(x.dtype) + (tt * self.b).to(x.dtype))


_predictor = eps_predictor


def _our_loop(sampler, predict, x, ts, noises):
    """Hand loop over ``sampler.step`` with the given noise per step (the last step adds none)."""
    for i, (t, s) in enumerate(zip(ts, ts[1:] + [-1])):
        tb = torch.full((x.shape[0],), t, dtype=torch.long)
        x0, eps = predict(x, tb)
        x = sampler.step(x, t, s, x0, eps, noise=noises[i])
    return x


def _hf_loop(sched, model, x, S, eta, noises=None, generator=None):
    sched.set_timesteps(S)
    for i, t in enumerate(sched.timesteps):
        kw = {"variance_noise": noises[i]} if noises is not None else {"generator": generator}
        x = sched.step(model(x, t), t, x, eta=eta, **kw).prev_sample
    return x


def _draw(shape, n, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(*shape, generator=g, dtype=F64).to(dtype)
    return x_T, [torch.randn(*shape, generator=g, dtype=F64).to(dtype) for _ in range(n)]


def _ddim_reference(ab: torch.Tensor, model, x, ts, eta, noises, prev=None):
    """The DDIM update of REFERENCES §2 in plain float64 scalars; ``prev(i, t)`` gives the target
    timestep of step i (default: the actual next element, -1 after the last)."""
    for i, t in enumerate(ts):
        s = prev(i, t) if prev is not None else (ts[i + 1] if i + 1 < len(ts) else -1)
        ab_t = float(ab[t])
        ab_s = float(ab[s]) if s >= 0 else 1.0
        eps = model(x, t)
        x0 = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
        sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_s)
        x = math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s - sigma**2) * eps + sigma * noises[i]
    return x


def _compute_alpha(b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ermongroup/ddim functions/denoising.py compute_alpha (index -1 -> ᾱ = 1), flat [B, 1]."""
    b = torch.cat([torch.zeros(1, dtype=b.dtype), b])
    return (1 - b).cumprod(0).index_select(0, t + 1).view(-1, 1)


def _generalized_steps(x, seq, model, b, eta, noises):
    """ermongroup/ddim generalized_steps; ``seq`` increasing, one noise per step (also the last)."""
    n = x.size(0)
    seq_next = [-1] + list(seq[:-1])
    for k, (i, j) in enumerate(zip(reversed(seq), reversed(seq_next))):
        t, next_t = torch.full((n,), i), torch.full((n,), j)
        at, at_next = _compute_alpha(b, t), _compute_alpha(b, next_t)
        et = model(x, t)
        x0_t = (x - et * (1 - at).sqrt()) / at.sqrt()
        c1 = eta * ((1 - at / at_next) * (1 - at_next) / (1 - at)).sqrt()
        c2 = ((1 - at_next) - c1**2).sqrt()
        x = at_next.sqrt() * x0_t + c1 * noises[k] + c2 * et
    return x


def _ddpm_steps(x, seq, model, b, noises, clip=True):
    """ermongroup/ddim ddpm_steps (the σ̂ row): posterior mean with β' = 1 - ᾱ_t/ᾱ_s, std sqrt(β'),
    x0 clamped to [-1, 1]; the noise is masked only where t == 0."""
    n = x.size(0)
    seq_next = [-1] + list(seq[:-1])
    for k, (i, j) in enumerate(zip(reversed(seq), reversed(seq_next))):
        t, next_t = torch.full((n,), i), torch.full((n,), j)
        at, atm1 = _compute_alpha(b, t), _compute_alpha(b, next_t)
        beta_t = 1 - at / atm1
        e = model(x, t)
        x0_from_e = (1.0 / at).sqrt() * x - (1.0 / at - 1).sqrt() * e
        if clip:
            x0_from_e = torch.clamp(x0_from_e, -1, 1)
        mean = ((atm1.sqrt() * beta_t) * x0_from_e + ((1 - beta_t).sqrt() * (1 - atm1)) * x) / (1.0 - at)
        mask = (1 - (t == 0).to(x.dtype)).view(-1, 1)
        x = mean + mask * torch.exp(0.5 * beta_t.log()) * noises[k]
    return x


# ----------------------------------------------------------------------------- diffusers parity
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("S", [10, 50, 100])
def test_leading_matches_diffusers_float64(diff, S, eta):
    ts = ss.leading(T, S)
    sched = _hf("leading", diff)
    sched.set_timesteps(S)
    assert sched.timesteps.tolist() == ts
    model = GaussianEps(diff.alphas_cumprod, 6, seed=S)
    x_T, noises = _draw((4, 6), S, seed=S + 1)
    ours = _our_loop(DDIMSampler(diff, eta), _predictor(diff, model), x_T, ts, noises)
    theirs = _hf_loop(sched, model, x_T, S, eta, noises)
    assert ours.dtype == F64 and torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    if eta > 0:  # the noise is really used: other noise, other sample
        other = _our_loop(DDIMSampler(diff, eta), _predictor(diff, model), x_T, ts, [-n for n in noises])
        assert (other - ours).abs().max() > 1e-3


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("S", [10, 50, 100])
def test_leading_matches_diffusers_float32(S, eta):
    """float32 on both sides: diffusers with its own float32 betas/ᾱ, ours with float64 constants
    built from the same (float32) betas."""
    sched = _hf("leading")
    diffusion = GaussianDiffusion(sched.betas.double())
    model = GaussianEps(diffusion.alphas_cumprod, 6, seed=S)
    x_T, noises = _draw((4, 6), S, seed=S + 2, dtype=torch.float32)
    ours = _our_loop(DDIMSampler(diffusion, eta), _predictor(diffusion, model), x_T, ss.leading(T, S), noises)
    theirs = _hf_loop(sched, model, x_T, S, eta, noises)
    assert ours.dtype == theirs.dtype == torch.float32
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_our_linear_betas_are_diffusers_betas(diff):
    # diffusers builds them in float32: equal to float32 round-off
    torch.testing.assert_close(diff.betas, _hf().betas.double(), rtol=2e-7, atol=0)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_sample_loop_matches_diffusers_with_same_generator(diff, eta):
    """sample_loop draws one randn(x.shape) per non-final step from the generator, in the order
    diffusers' step draws them (diffusers' extra draw on the last step is multiplied by σ = 0)."""
    S = 50
    model = GaussianEps(diff.alphas_cumprod, 8, seed=3)

    def model4d(x, t):
        return model(x.reshape(x.shape[0], -1), t).reshape(x.shape)

    x_T = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    ours = sample_loop(
        _predictor(diff, model4d), DDIMSampler(diff, eta), x_T, ss.leading(T, S), torch.Generator().manual_seed(9)
    )
    theirs = _hf_loop(_hf("leading", diff), model4d, x_T, S, eta, generator=torch.Generator().manual_seed(9))
    assert ours.shape == x_T.shape
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("S", [10, 50])
def test_trailing_matches_diffusers(diff, S, eta):
    ts = ss.trailing(T, S)
    assert ts[0] == T - 1
    sched = _hf("trailing", diff)
    sched.set_timesteps(S)
    assert sched.timesteps.tolist() == ts
    model = GaussianEps(diff.alphas_cumprod, 5, seed=7)
    x_T, noises = _draw((3, 5), S, seed=8)
    ours = _our_loop(DDIMSampler(diff, eta), _predictor(diff, model), x_T, ts, noises)
    torch.testing.assert_close(ours, _hf_loop(sched, model, x_T, S, eta, noises), rtol=0, atol=1e-10)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("S", [10, 50])
def test_linspace_uses_the_actual_next_timestep(diff, S, eta):
    """diffusers' DDIM steps to t - T//S, which is not the next element of a "linspace" sequence
    (diffusers issues 12633, 11347); ours steps to the actual next element."""
    ts = ss.linspace(T, S)
    sched = _hf("linspace", diff)
    sched.set_timesteps(S)
    assert sched.timesteps.tolist() == ts
    assert any(t - T // S != s for t, s in zip(ts, ts[1:]))  # the defect is reachable for this S
    model = GaussianEps(diff.alphas_cumprod, 5, seed=10)
    x_T, noises = _draw((3, 5), S, seed=11)
    ours = _our_loop(DDIMSampler(diff, eta), _predictor(diff, model), x_T, ts, noises)
    ref = _ddim_reference(diff.alphas_cumprod, model, x_T, ts, eta, noises)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    theirs = _hf_loop(sched, model, x_T, S, eta, noises)
    assert (ours - theirs).abs().max() > 1e-2
    # diffusers' result is the same update with the wrong target t - T//S: the bug, reproduced
    wrong = _ddim_reference(diff.alphas_cumprod, model, x_T, ts, eta, noises, prev=lambda i, t: t - T // S)
    torch.testing.assert_close(theirs, wrong, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- reference code
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("S", [10, 100])
def test_matches_reference_generalized_steps(diff, S, eta):
    ts = ss.uniform(T, S)
    model = GaussianEps(diff.alphas_cumprod, 6, seed=12)
    x_T, noises = _draw((4, 6), len(ts), seed=13)
    ours = _our_loop(DDIMSampler(diff, eta), _predictor(diff, model), x_T, ts, noises)
    ref = _generalized_steps(x_T, list(range(0, T, T // S)), model, diff.betas, eta, noises)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours, _ddim_reference(diff.alphas_cumprod, model, x_T, ts, eta, noises),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("ts", [ss.uniform(T, 20), [999, 700, 350, 101, 37, 5, 0]], ids=["uniform20", "irregular"])
def test_sigma_hat_equals_fixed_large_step_by_step(diff, ts):
    model = GaussianEps(diff.alphas_cumprod, 5, seed=14)
    predict = _predictor(diff, model)
    x, noises = _draw((3, 5), len(ts), seed=15)
    hat, large = DDIMSampler(diff, "sigma_hat"), AncestralSampler(diff, "fixed_large")
    eta1 = DDIMSampler(diff, 1.0)
    for i, (t, s) in enumerate(zip(ts, ts[1:] + [-1])):
        x0, eps = predict(x, torch.full((3,), t))
        out = hat.step(x, t, s, x0, eps, noise=noises[i])
        torch.testing.assert_close(out, large.step(x, t, s, x0, eps, noise=noises[i]), rtol=0, atol=1e-12)
        std = hat.coefficients(t, s)[2]
        if s >= 0:
            ab_t, ab_s = diff.alphas_cumprod[t].item(), diff.alphas_cumprod[s].item()
            assert std == pytest.approx(math.sqrt(1 - ab_t / ab_s), rel=1e-12)
            assert std > eta1.coefficients(t, s)[2]  # σ̂ > σ(η=1)
            assert hat.coefficients(t, s)[:2] == pytest.approx(eta1.coefficients(t, s)[:2], rel=1e-12)
        else:
            assert std == 0.0
        x = out


@pytest.mark.parametrize("clip", [False, True])
def test_sigma_hat_matches_reference_ddpm_steps(diff, clip):
    """σ̂ DDIM over a skip sequence equals ermongroup ddpm_steps, with x0 clipping on both sides
    (to_x0_eps(clip_x0=1.0) re-derives ε from the clipped x0) or off on both."""
    S = 20
    ts = ss.uniform(T, S)
    model = GaussianEps(diff.alphas_cumprod, 6, seed=16, sigma=1.5)  # wide data: x0' often leaves [-1, 1]
    x_T, noises = _draw((8, 6), len(ts), seed=17)
    sampler = DDIMSampler(diff, "sigma_hat")
    ours = _our_loop(sampler, _predictor(diff, model, clip_x0=1.0 if clip else None), x_T, ts, noises)
    ref = _ddpm_steps(x_T, list(range(0, T, T // S)), model, diff.betas, noises, clip=clip)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    other = _ddpm_steps(x_T, list(range(0, T, T // S)), model, diff.betas, noises, clip=not clip)
    assert (ours - other).abs().max() > 1e-3  # clipping is active in this run


@pytest.mark.parametrize("ts", [ss.uniform(T, 25), ss.quadratic(T, 10), [999, 500, 20, 3]],
                         ids=["uniform25", "quadratic10", "irregular"])
def test_eta_one_equals_ancestral_fixed_small(diff, ts):
    """DDIM η=1 is the DDPM posterior over the sub-sequence (closed-form identity)."""
    model = GaussianEps(diff.alphas_cumprod, 6, seed=18)
    predict = _predictor(diff, model)
    x_T = torch.randn(4, 6, generator=torch.Generator().manual_seed(19), dtype=F64)
    a = sample_loop(predict, DDIMSampler(diff, 1.0), x_T, ts, torch.Generator().manual_seed(5))
    b = sample_loop(predict, AncestralSampler(diff, "fixed_small"), x_T, ts, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    c = sample_loop(predict, DDIMSampler(diff, 0.5), x_T, ts, torch.Generator().manual_seed(5))
    assert (a - c).abs().max() > 1e-3


def test_coefficients_and_last_step(diff):
    sampler = DDIMSampler(diff, 0.0)
    for t, s in [(999, 899), (500, 20), (1, 0)]:
        ab_t, ab_s = diff.alphas_cumprod[t].item(), diff.alphas_cumprod[s].item()
        c_x0, c_eps, std = sampler.coefficients(t, s)
        assert (c_x0, c_eps, std) == pytest.approx((math.sqrt(ab_s), math.sqrt(1 - ab_s), 0.0), rel=1e-12)
        c_x0, c_eps, std = DDIMSampler(diff, 0.5).coefficients(t, s)
        sigma = 0.5 * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
        assert (c_x0, c_eps, std) == pytest.approx((math.sqrt(ab_s), math.sqrt(1 - ab_s - sigma**2), sigma), rel=1e-12)
    # the last step goes to the clean data and returns x0' without noise, for every η
    g = torch.Generator().manual_seed(0)
    x_t, x0, eps, z = (torch.randn(3, 4, generator=g, dtype=F64) for _ in range(4))
    for eta in (0.0, 1.0, "sigma_hat"):
        for t in (0, 100):
            torch.testing.assert_close(DDIMSampler(diff, eta).step(x_t, t, -1, x0, eps, noise=z), x0,
                                       rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- repeats, generators
def test_repeated_timesteps_are_noops(diff):
    ts = ss.make_timesteps("quadratic", T, 100, keep_duplicates=True)
    dedup = ss.make_timesteps("quadratic", T, 100)
    assert len(ts) == 100 and len(dedup) == 96
    model = GaussianEps(diff.alphas_cumprod, 6, seed=20)
    calls = []

    def predict(x, t):
        calls.append(int(t[0]))
        return _predictor(diff, model)(x, t)

    x_T = torch.randn(4, 6, generator=torch.Generator().manual_seed(21), dtype=F64)
    sampler = DDIMSampler(diff, 0.0)
    with pytest.raises(ConfigError, match="strictly decreasing"):
        sample_loop(predict, sampler, x_T, ts)
    assert calls == []
    a = sample_loop(predict, sampler, x_T, ts, allow_repeats=True)
    assert calls == ts  # NFE 100: the repeats still cost a network call
    b = sample_loop(predict, sampler, x_T, dedup)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # one repeated step t -> t leaves x unchanged
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(22), dtype=F64)
    for t in (2, 500):
        x0, eps = _predictor(diff, model)(x, torch.full((4,), t))
        torch.testing.assert_close(sampler.step(x, t, t, x0, eps), x, rtol=0, atol=1e-12)
        assert DDIMSampler(diff, 1.0).coefficients(t, t)[2] == 0.0


def test_generator_determinism(diff):
    model = GaussianEps(diff.alphas_cumprod, 6, seed=23)
    predict = _predictor(diff, model)
    ts = ss.uniform(T, 20)
    x_T = torch.randn(4, 6, generator=torch.Generator().manual_seed(24), dtype=F64)
    rng = torch.get_rng_state()
    for eta in (0.5, "sigma_hat"):
        sampler = DDIMSampler(diff, eta)
        a = sample_loop(predict, sampler, x_T, ts, torch.Generator().manual_seed(1))
        b = sample_loop(predict, sampler, x_T, ts, torch.Generator().manual_seed(1))
        c = sample_loop(predict, sampler, x_T, ts, torch.Generator().manual_seed(2))
        assert torch.equal(a, b)
        assert (a - c).abs().max() > 1e-3
    assert torch.equal(torch.get_rng_state(), rng)  # only the given generators were used
    # η = 0 is deterministic: it draws nothing from the generator (or the global RNG)
    sampler = DDIMSampler(diff, 0.0)
    assert not sampler.stochastic and DDIMSampler(diff, 0.5).stochastic and DDIMSampler(diff, "sigma_hat").stochastic
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    a = sample_loop(predict, sampler, x_T, ts, g)
    assert torch.equal(g.get_state(), state)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(a, sample_loop(predict, sampler, x_T, ts, torch.Generator().manual_seed(4)))
    assert torch.equal(a, sample_loop(predict, sampler, x_T, ts))


# ----------------------------------------------------------------------------- inversion
MU, STD = 0.5, 0.5


def _exact_gaussian_predictor(diffusion: GaussianDiffusion):
    """Data x0 ~ N(μ, s²I): x_t ~ N(sqrt(ᾱ)μ, (ᾱs² + 1-ᾱ)I) and the exact
    E[ε | x_t] = sqrt(1-ᾱ)(x_t - sqrt(ᾱ)μ)/(ᾱs² + 1-ᾱ)."""

    def predict(x, t):
        ab = diffusion.alphas_cumprod[t].reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * MU) / (ab * STD**2 + 1 - ab)
        return diffusion.to_x0_eps("eps", x, t, eps)

    return predict


@pytest.mark.parametrize("name", ["uniform", "leading"])
def test_inversion_reconstructs_and_converges(diff, name):
    predict = _exact_gaussian_predictor(diff)
    x0 = MU + STD * torch.randn(2000, 8, generator=torch.Generator().manual_seed(25), dtype=F64)
    rec_errs, map_errs = [], []
    for S in (10, 50, 200, 1000):
        ts = ss.make_timesteps(name, T, S)
        x_top = ddim_invert(predict, diff, x0, ts)
        rec = sample_loop(predict, DDIMSampler(diff, 0.0), x_top, ts)
        rec_errs.append(((rec - x0).norm() / x0.norm()).item())
        # the exact probability-flow map of Gaussian data onto level ts[0] is affine
        ab = diff.alphas_cumprod[ts[0]]
        exact = ab.sqrt() * MU + (ab * STD**2 + 1 - ab).sqrt() / STD * (x0 - MU)
        map_errs.append(((x_top - exact).norm() / exact.norm()).item())
        if S == 1000:
            assert ts == list(range(T - 1, -1, -1))
            # the inverted latents are ~N(0, I) (ᾱ_999 ≈ 4e-5)
            assert abs(x_top.mean().item()) < 0.05
            assert abs(x_top.std().item() - 1) < 0.05
    assert all(a > b for a, b in zip(rec_errs, rec_errs[1:])), rec_errs
    assert all(a > b for a, b in zip(map_errs, map_errs[1:])), map_errs
    assert rec_errs[-1] < 1e-2 and map_errs[-1] < 1e-2
    assert rec_errs[0] > 10 * rec_errs[-1]  # a real discretisation error at S=10, gone at S=1000


def test_inversion_validates_and_keeps_shape(diff):
    exact = _exact_gaussian_predictor(diff)
    calls = []

    def predict(x, t):
        calls.append(t.clone())
        return exact(x, t)

    x0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(26), dtype=F64)
    ts = ss.uniform(T, 10)
    out = ddim_invert(predict, diff, x0, ts)
    assert out.shape == x0.shape and torch.isfinite(out).all()
    # one call per element, walking the sequence upwards; the step c -> t evaluates the model at (x_c, t)
    assert [int(c[0]) for c in calls] == ts[::-1]
    assert all(c.shape == (2,) and c.dtype == torch.long for c in calls)
    with pytest.raises(ConfigError):
        ddim_invert(predict, diff, x0, [0, 500])


# ----------------------------------------------------------------------------- slerp
def test_slerp_endpoints_and_norms():
    g = torch.Generator().manual_seed(27)
    z1, z2 = torch.randn(4, 3, 32, 32, generator=g, dtype=F64), torch.randn(4, 3, 32, 32, generator=g, dtype=F64)
    torch.testing.assert_close(slerp(z1, z2, 0.0), z1, rtol=0, atol=1e-12)
    torch.testing.assert_close(slerp(z1, z2, 1.0), z2, rtol=0, atol=1e-12)
    n1, n2 = z1.flatten(1).norm(dim=1), z2.flatten(1).norm(dim=1)
    for a in (0.1, 0.25, 0.5, 0.75, 0.9):
        n = slerp(z1, z2, a).flatten(1).norm(dim=1)
        # near-orthogonal high-dim Gaussians: slerp keeps the norm, linear interpolation shrinks it
        assert torch.all((n - (n1 + n2) / 2).abs() < 0.03 * (n1 + n2) / 2)
    lerp = (0.5 * z1 + 0.5 * z2).flatten(1).norm(dim=1)
    assert torch.all(lerp < 0.75 * (n1 + n2) / 2)
    # per sample: the angle is computed per row of the batch
    mixed = slerp(z1, z2, 0.5)
    for i in range(4):
        torch.testing.assert_close(mixed[i : i + 1], slerp(z1[i : i + 1], z2[i : i + 1], 0.5), rtol=0, atol=1e-12)


def test_slerp_follows_the_great_circle():
    z1 = torch.tensor([[1.0, 0.0]], dtype=F64)
    z2 = torch.tensor([[0.0, 2.0]], dtype=F64)
    out = slerp(z1, z2, 1 / 3)  # θ = π/2: weights sin(π/3), sin(π/6)
    torch.testing.assert_close(out, torch.tensor([[math.sin(math.pi / 3), 2 * math.sin(math.pi / 6)]], dtype=F64))


def test_slerp_degenerate_angles():
    z = torch.randn(2, 64, generator=torch.Generator().manual_seed(28), dtype=F64)
    # θ = π (z and -z): no NaN, endpoints kept
    for a in (0.0, 0.3, 0.5, 1.0):
        assert torch.isfinite(slerp(z, -z, a)).all()
    torch.testing.assert_close(slerp(z, -z, 0.0), z, rtol=0, atol=1e-12)
    torch.testing.assert_close(slerp(z, -z, 1.0), -z, rtol=0, atol=1e-12)
    # θ ≈ 0 (identical or nearly parallel): falls back to linear interpolation
    for z2 in (z.clone(), z * (1 + 1e-12), 2 * z):
        for a in (0.0, 0.5, 1.0):
            out = slerp(z, z2, a)
            assert torch.isfinite(out).all()
            torch.testing.assert_close(out, (1 - a) * z + a * z2, rtol=0, atol=1e-9)
    # float32 with nearly parallel vectors: cos rounds to > 1, clamped, no NaN
    z32 = z.float()
    assert torch.isfinite(slerp(z32, z32 * 1.0000001, 0.5)).all()


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("eta", [-1, -0.1, "foo", None, True, [0.5]])
def test_invalid_eta(eta):
    with pytest.raises(ConfigError, match="sampler.eta"):
        DDIMSampler(GaussianDiffusion.from_schedule("linear", 10), eta)


def test_valid_eta_forms():
    d = GaussianDiffusion.from_schedule("linear", 10)
    assert DDIMSampler(d, 0).eta == 0.0 and DDIMSampler(d, 2).eta == 2.0
    s = DDIMSampler(d, "sigma_hat")
    assert s.sigma_hat and s.eta == 1.0
