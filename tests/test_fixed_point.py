"""Parallel samplers: DEQ-DDIM (Anderson) and Picard windows converge to sequential DDIM (η = 0)."""

from __future__ import annotations

import pytest
import torch

from siddm_lab.diffusion import DDIMSampler, DEQSampler, GaussianDiffusion, PicardSampler, anderson, sample_loop
from siddm_lab.errors import ConfigError
from siddm_lab.nets import UNet


def _toy_predict(diff, s2: float = 0.5):
    """The exact ε-predictor of data N(0, s2·I) (x_t ~ N(0, (ᾱ s2 + 1 - ᾱ) I)) with a small tanh term: a
    well-behaved, nonlinear denoiser whose DDIM chain stays bounded."""
    ab_all = diff.alphas_cumprod.float()

    def predict(x, t):
        ab = ab_all[t][:, None]
        eps = (1 - ab).sqrt() * x / (ab * s2 + 1 - ab) + 0.05 * torch.tanh(x)
        return diff.to_x0_eps("eps", x, t, eps)

    return predict


@pytest.fixture
def diff():
    return GaussianDiffusion.from_schedule("linear", 1000)


def test_anderson_solves_a_linear_fixed_point():
    """x = A x + b with ||A|| < 1 has the solution (I - A)^-1 b; Anderson reaches it far faster than
    plain iteration on a slowly contracting map."""
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(torch.linspace(0.5, 0.97, 20, dtype=torch.float64)) @ Q.T
    b = torch.randn(3, 20, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(torch.eye(20, dtype=torch.float64) - A, b.T).T
    x, residuals, iters = anderson(lambda x: x @ A.T + b, torch.zeros(3, 20, dtype=torch.float64), m=6, tol=1e-10,
                                   max_iter=200)
    torch.testing.assert_close(x, exact, rtol=1e-6, atol=1e-7)
    assert iters < 120  # plain iteration needs log(1e-10)/log(0.97) ≈ 750
    assert residuals[-1] < 1e-10


@pytest.mark.parametrize("steps", [10, 50])
def test_deq_equals_sequential_ddim_on_the_toy(diff, steps):
    predict = _toy_predict(diff)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    ddim = DDIMSampler(diff, 0.0, steps=steps)
    ref = sample_loop(predict, ddim, x_T, ddim.timesteps)
    deq = DEQSampler(diff, steps=steps, tol=1e-5)
    out = deq.sample(predict, x_T)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    stats = deq.last_stats
    assert stats["nfe"] == stats["iterations"] * steps and stats["residual"] < 1e-5
    assert deq.settings()["iterations"] == stats["iterations"]


@pytest.mark.parametrize("window", [1, 4, None])
def test_picard_equals_sequential_ddim(diff, window):
    predict = _toy_predict(diff)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(2))
    ddim = DDIMSampler(diff, 0.0, steps=20)
    ref = sample_loop(predict, ddim, x_T, ddim.timesteps)
    picard = PicardSampler(diff, steps=20, window=window, tol=1e-7)
    torch.testing.assert_close(picard.sample(predict, x_T), ref, rtol=1e-4, atol=1e-4)
    assert picard.last_stats["converged"]
    if window == 1:  # one state per iteration: exactly the sequential chain
        assert picard.last_stats["iterations"] == 20 and picard.last_stats["nfe"] == 20


def tiny_unet_predict(std: float = 0.02):
    """(process, ε-predictor) of an 8×8 UNet with random weights N(0, std²), T = 100."""
    diff = GaussianDiffusion.from_schedule("linear", 100)
    torch.manual_seed(0)
    net = UNet(1, image_size=8, ch=32, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=std)
    net.eval().requires_grad_(False)
    return diff, lambda x, t: diff.to_x0_eps("eps", x, t, net(x, t))


def test_deq_on_a_tiny_unet_equals_sequential_ddim():
    diff, predict = tiny_unet_predict()

    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ddim = DDIMSampler(diff, 0.0, steps=10)
    with torch.no_grad():
        ref = sample_loop(predict, ddim, x_T, ddim.timesteps)
    deq = DEQSampler(diff, steps=10, tol=1e-6, chunk=3)
    torch.testing.assert_close(deq.sample(predict, x_T), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cls,kwargs,message", [
    (DEQSampler, {"m": 0}, "sampler.m=0"),
    (DEQSampler, {"tol": 0.0}, "sampler.tol=0.0"),
    (DEQSampler, {"tol": -1.0}, "sampler.tol=-1.0"),
    (DEQSampler, {"damping": 0.0}, "sampler.damping"),
    (PicardSampler, {"window": 11}, r"sampler.window=11 is invalid.*1\.\.10"),
    (PicardSampler, {"window": 0}, "sampler.window=0"),
    (PicardSampler, {"tol": 0}, "sampler.tol=0"),
])
def test_bad_settings_are_refused(diff, cls, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        cls(diff, steps=10, **kwargs)


def _gmm_predict(diff, s2: float = 0.01):
    """The exact ε-predictor of a 4-mode 2-D Gaussian mixture (means (±1, ±1), variance s2): a sharply
    nonlinear denoiser, the hard case for fixed-point solvers."""
    ab_all = diff.alphas_cumprod.float()
    mu = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])

    def predict(x, t):
        ab = ab_all[t][:, None]
        m = ab.sqrt()[:, None] * mu[None]
        v = (ab * s2 + 1 - ab)[:, None]
        w = (-((x[:, None] - m) ** 2).sum(-1) / (2 * v[..., 0])).softmax(1)[..., None]
        eps = -(1 - ab).sqrt() * (w * (m - x[:, None]) / v).sum(1)
        return diff.to_x0_eps("eps", x, t, eps)

    return predict


def _sequential_trajectory(predict, sampler, x_T):
    states, x = [], x_T
    ts = sampler.timesteps
    for t, s in zip(ts, ts[1:] + [-1]):
        x0, eps = sampler.clipped(predict)(x, torch.full((len(x),), t, dtype=torch.long))
        x = sampler.step(x, t, s, x0, eps)
        states.append(x)
    return torch.stack(states)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_both_chain_maps_have_the_sequential_chain_as_fixed_point(diff, clip):
    """F(X*) = X* for the sequential DDIM trajectory X*, in the sequential and the unrolled form (with and
    without clipping x0'), and the unrolled form of a window anchored at a state reproduces it too."""
    predict = _gmm_predict(diff)
    deq = DEQSampler(diff, steps=20, clip_x0=clip)
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(4))
    X = _sequential_trajectory(predict, deq, x_T)
    for form in ("sequential", "unrolled"):
        torch.testing.assert_close(deq.chain_map(predict, x_T, X, form=form), X, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(deq.chain_map(predict, x_T, X, slice(7, 13)), X[7:13], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("steps", [50, 100])
def test_the_unrolled_form_converges_in_fewer_iterations(diff, steps):
    """The unrolled form carries x_T to every state in one iteration: on the mixture it reaches the sequential
    result in well under S iterations, where the sequential form needs about S/2 or more."""
    predict = _gmm_predict(diff)
    x_T = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))
    ddim = DDIMSampler(diff, 0.0, steps=steps)
    ref = sample_loop(predict, ddim, x_T, ddim.timesteps)
    iters = {}
    for form in ("sequential", "unrolled"):
        for cls in (DEQSampler, PicardSampler):
            smp = cls(diff, steps=steps, tol=1e-4, form=form)
            out = smp.sample(predict, x_T)
            iters[form, cls.name] = smp.last_stats["iterations"]
            assert float((out - ref).abs().max()) < 2e-3
    for name in ("deq", "picard"):
        assert iters["unrolled", name] <= steps // 3 < iters["sequential", name]


def test_anderson_with_memory_one_is_damped_iteration():
    """m = 1 (no history) is plain iteration x <- β f(x) + (1-β) x; it used to index past its buffer."""
    A = torch.tensor([[0.5, 0.0], [0.0, 0.25]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    x, residuals, iters = anderson(lambda x: x @ A.T + b, torch.zeros(1, 2, dtype=torch.float64), m=1, beta=0.5,
                                   tol=1e-9, max_iter=500)
    torch.testing.assert_close(x, torch.tensor([[2.0, 4 / 3]], dtype=torch.float64))
    assert 20 < iters < 500


@pytest.mark.parametrize("cls,kwargs,message", [
    (DEQSampler, {"form": "cumulative"}, "sampler.form='cumulative' is invalid"),
    (PicardSampler, {"form": "x"}, "sampler.form='x' is invalid"),
    (DEQSampler, {"max_iter": 0}, "sampler.max_iter=0"),
    (DEQSampler, {"chunk": 0}, "sampler.chunk=0"),
])
def test_more_bad_settings_are_refused(diff, cls, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        cls(diff, steps=10, **kwargs)
