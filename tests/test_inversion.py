"""Model inversion through the DDIM chain: exact gradients (backprop, IFT, S phantom steps) agree; every
method lowers the loss; bad settings are refused."""

from __future__ import annotations

import pytest
import torch

from siddm_lab.diffusion import (
    DDIMSampler,
    DEQSampler,
    GaussianDiffusion,
    Inversion,
    decode_backprop,
    ift_gradient,
)
from siddm_lab.errors import ConfigError
from tests.test_fixed_point import _gmm_predict, tiny_unet_predict


@pytest.fixture(scope="module")
def unet_predict():
    return tiny_unet_predict(std=0.05)


def _backprop_grad(predict, sampler, x_T, v):
    z = x_T.clone().requires_grad_()
    return torch.autograd.grad((decode_backprop(predict, sampler, z) * v).sum(), z)[0]


@pytest.mark.parametrize("case", ["unet", "gmm"])
def test_ift_and_s_phantom_steps_give_the_backprop_gradient(unet_predict, case):
    """Through the fixed point, the implicit gradient with S adjoint iterations, and S undamped phantom steps,
    both equal the gradient of backpropagation through the sequential chain (∂F/∂X is nilpotent)."""
    if case == "unet":
        diff, predict = unet_predict
        x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    else:
        diff = GaussianDiffusion.from_schedule("linear", 1000)
        predict = _gmm_predict(diff, s2=0.05)
        x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    S = 8
    deq = DEQSampler(diff, steps=S, tol=1e-6, max_iter=100)
    v = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(5))
    exact = _backprop_grad(predict, deq, x_T, v)
    X = deq.trajectory(predict, x_T)
    torch.testing.assert_close(X[-1], decode_backprop(predict, deq, x_T), rtol=1e-4, atol=1e-4)
    ift = ift_gradient(predict, deq, x_T, X, v, S)
    torch.testing.assert_close(ift, exact, rtol=1e-3, atol=1e-4 * float(exact.abs().max()))
    z = x_T.clone().requires_grad_()
    Xk = X.detach()
    for _ in range(S):
        Xk = deq.chain_map(predict, z, Xk)
    phantom = torch.autograd.grad((Xk[-1] * v).sum(), z)[0]
    torch.testing.assert_close(phantom, exact, rtol=1e-3, atol=1e-4 * float(exact.abs().max()))
    # one adjoint iteration is not the exact gradient on a nonlinear denoiser
    if case == "gmm":
        one = ift_gradient(predict, deq, x_T, X, v, 1)
        assert float((one - exact).norm() / exact.norm()) > 1e-2


@pytest.mark.parametrize("method", ["backprop", "phantom", "ift"])
def test_inversion_lowers_the_loss(method):
    """Targets drawn by decoding a known x_T: every method brings the decoded x0 close to them from noise."""
    diff = GaussianDiffusion.from_schedule("linear", 1000)
    predict = _gmm_predict(diff, s2=0.05)
    deq = DEQSampler(diff, steps=10, tol=1e-5)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        target = decode_backprop(predict, deq, torch.randn(32, 2, generator=g))
    x_T = torch.randn(32, 2, generator=g)
    calls = []
    r = Inversion(method, iters=60, lr=0.05).run(predict, deq, target, x_T, on_step=lambda *a: calls.append(a))
    assert r["curve"][-1] < 0.2 * r["curve"][0]
    assert [c[0] for c in calls] == list(range(1, 61)) and [c[1] for c in calls] == r["curve"]
    lowest = [c[2] for c in calls]  # the mean of the per-image best so far never rises and ends at min_loss
    assert all(b <= a + 1e-7 for a, b in zip(lowest, lowest[1:]))
    assert lowest[-1] == pytest.approx(float(r["min_loss"].mean()))
    assert float(r["min_loss"].mean()) <= min(r["curve"]) + 1e-6
    final = (Inversion(method).decode(predict, deq, r["x_T"]) - target).pow(2).mean(1)
    torch.testing.assert_close(final, r["min_loss"], rtol=0.05, atol=1e-3)  # the reported x_T is the best one
    if method != "backprop":
        assert len(r["fixed_point_iterations"]) == 60 and r["nfe"] >= 60 * 10


def test_backprop_and_ift_follow_the_same_adam_path():
    diff = GaussianDiffusion.from_schedule("linear", 1000)
    predict = _gmm_predict(diff, s2=0.05)
    deq = DEQSampler(diff, steps=6, tol=1e-6, max_iter=60)
    g = torch.Generator().manual_seed(1)
    target, x_T = torch.randn(8, 2, generator=g).clamp(-1, 1), torch.randn(8, 2, generator=g)
    a = Inversion("backprop", iters=15, lr=0.05).run(predict, deq, target, x_T)
    b = Inversion("ift", iters=15, lr=0.05, adjoint_iters=6).run(predict, deq, target, x_T)
    torch.testing.assert_close(torch.tensor(a["curve"]), torch.tensor(b["curve"]), rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "newton"}, "invert.method='newton' is unknown; allowed: backprop, phantom, ift"),
    ({"iters": 0}, "invert.iters=0"),
    ({"lr": 0.0}, "invert.lr=0.0"),
    ({"lr": float("inf")}, "invert.lr=inf"),
    ({"pg_steps": 0}, "invert.pg_steps=0"),
    ({"pg_damping": 0.0}, r"invert.pg_damping=0.0 is invalid: expected a number in \(0, 1\]"),
    ({"adjoint_iters": 0}, "invert.adjoint_iters=0"),
])
def test_bad_inversion_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Inversion(**kwargs)


def test_the_decoder_must_be_deterministic_and_deq_for_fixed_point_gradients():
    diff = GaussianDiffusion.from_schedule("linear", 100)
    predict = _gmm_predict(diff)
    x = torch.zeros(2, 2)
    with pytest.raises(ConfigError, match="deterministic DDIM"):
        Inversion("backprop").run(predict, DDIMSampler(diff, 0.5, steps=5), x, x)
    with pytest.raises(ConfigError, match="invert.method=phantom differentiates through the DEQ fixed point"):
        Inversion("phantom").run(predict, DDIMSampler(diff, 0.0, steps=5), x, x)
