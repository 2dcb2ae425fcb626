"""GaussianDiffusion (siddm_lab.diffusion.gaussian): closed forms in float64 and diffusers.

References are computed here independently from the betas (numpy float64) with the formulas of
REFERENCES.md §1 and §3; the diffusers oracle is DDPMScheduler with its float32 schedule
replaced by our float64 one so the comparison is at float64 precision (atol 1e-12).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers import scheduling_ddpm

from siddm_lab.diffusion.gaussian import PREDICTION_TYPES, GaussianDiffusion, extract
from siddm_lab.diffusion.schedules import make_betas
from siddm_lab.errors import ConfigError

F64 = torch.float64
TIGHT = {"rtol": 1e-12, "atol": 1e-12}


@pytest.fixture(scope="module")
def diff() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("linear", 1000)


@pytest.fixture(scope="module")
def ref(diff):
    """Schedule quantities recomputed with numpy from the betas alone."""
    b = diff.betas.numpy().copy()
    a = 1.0 - b
    ab = np.cumprod(a)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    return {"b": b, "a": a, "ab": ab, "ab_prev": ab_prev}


def _col(v, x):
    """numpy per-sample scalars -> tensor broadcasting against x."""
    return torch.as_tensor(np.asarray(v), dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def _hf64(diffusion: GaussianDiffusion, **kw) -> DDPMScheduler:
    """diffusers DDPMScheduler running on our float64 schedule."""
    s = DDPMScheduler(num_train_timesteps=diffusion.num_timesteps, clip_sample=False, **kw)
    s.betas = diffusion.betas.clone()
    s.alphas = diffusion.alphas.clone()
    s.alphas_cumprod = diffusion.alphas_cumprod.clone()
    s.one = torch.tensor(1.0, dtype=F64)
    return s


T_CHECK = [0, 1, 2, 10, 250, 500, 998, 999]


def _batch(seed=0, shape=None, dtype=F64):
    shape = shape or (len(T_CHECK), 3, 4, 4)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=dtype)
    eps = torch.randn(shape, generator=g, dtype=dtype)
    t = torch.tensor(T_CHECK, dtype=torch.long)
    return x0, eps, t


# ----------------------------------------------------------------------------- construction
def test_buffers_match_numpy(diff, ref):
    assert diff.num_timesteps == 1000
    np.testing.assert_allclose(diff.alphas_cumprod.numpy(), ref["ab"], rtol=1e-14)
    np.testing.assert_allclose(diff.alphas_cumprod_prev.numpy(), ref["ab_prev"], rtol=1e-14)
    assert diff.alphas_cumprod_prev[0].item() == 1.0
    np.testing.assert_allclose(
        diff.sqrt_recip_alphas_cumprod.numpy(), 1 / np.sqrt(ref["ab"]), rtol=1e-13
    )
    np.testing.assert_allclose(
        diff.sqrt_recipm1_alphas_cumprod.numpy(), np.sqrt(1 / ref["ab"] - 1), rtol=1e-12
    )
    for name, buf in diff.named_buffers():
        assert buf.dtype == F64, name
        assert buf.shape == (1000,), name
    # non-persistent: schedule constants never enter checkpoints
    assert diff.state_dict() == {}


def test_from_schedule_equals_make_betas():
    d = GaussianDiffusion.from_schedule("cosine", 50)
    torch.testing.assert_close(d.betas, make_betas("cosine", 50), rtol=0, atol=0)


@pytest.mark.parametrize("bad", [[], [0.0, 0.1], [0.1, 1.5], [-0.1], [float("nan")]])
def test_invalid_betas_raise(bad):
    with pytest.raises(ConfigError, match="betas"):
        GaussianDiffusion(torch.tensor(bad, dtype=F64))


# ----------------------------------------------------------------------------- extract
@pytest.mark.parametrize("shape", [(5, 7), (5, 3, 8, 8), (5,), (5, 2, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.float16])
def test_extract_broadcast_shape_dtype(diff, shape, dtype):
    t = torch.tensor([0, 3, 999, 500, 3], dtype=torch.int32)
    x = torch.zeros(shape, dtype=dtype)
    out = extract(diff.alphas_cumprod, t, x)
    assert out.shape == (5,) + (1,) * (len(shape) - 1)
    assert out.dtype == dtype
    torch.testing.assert_close(
        out.flatten(), diff.alphas_cumprod[t.long()].to(dtype), rtol=0, atol=0
    )
    assert (out + x).shape == shape


# ----------------------------------------------------------------------------- forward process
def test_q_sample_formula_and_diffusers(diff, ref):
    x0, eps, t = _batch()
    ab = ref["ab"][t.numpy()]
    expected = _col(np.sqrt(ab), x0) * x0 + _col(np.sqrt(1 - ab), x0) * eps
    out = diff.q_sample(x0, t, eps)
    torch.testing.assert_close(out, expected, **TIGHT)
    torch.testing.assert_close(out, _hf64(diff).add_noise(x0, eps, t), **TIGHT)


def test_q_sample_float32_close_to_float64(diff):
    x0, eps, t = _batch()
    out32 = diff.q_sample(x0.float(), t, eps.float())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), diff.q_sample(x0, t, eps), rtol=0, atol=2e-6)


def test_q_sample_random_noise_uses_randn(diff):
    x0, _, t = _batch()
    torch.manual_seed(3)
    a = diff.q_sample(x0, t)
    torch.manual_seed(3)
    b = diff.q_sample(x0, t, torch.randn_like(x0))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_q_mean_variance(diff, ref):
    x0, _, t = _batch()
    mean, var = diff.q_mean_variance(x0, t)
    ab = ref["ab"][t.numpy()]
    torch.testing.assert_close(mean, _col(np.sqrt(ab), x0) * x0, **TIGHT)
    torch.testing.assert_close(var, _col(1 - ab, x0), **TIGHT)


def test_q_sample_step_formula(diff, ref):
    x_prev, eps, t = _batch(1)
    b = ref["b"][t.numpy()]
    expected = _col(np.sqrt(1 - b), x_prev) * x_prev + _col(np.sqrt(b), x_prev) * eps
    torch.testing.assert_close(diff.q_sample_step(x_prev, t, eps), expected, **TIGHT)


def test_q_sample_pairs_values(diff, ref):
    x0, n1, t = _batch(2)
    n2 = torch.randn_like(x0)
    x_prev, x_t = diff.q_sample_pairs(x0, t, n1, n2)
    ab_prev = ref["ab_prev"][t.numpy()]
    exp_prev = _col(np.sqrt(ab_prev), x0) * x0 + _col(np.sqrt(1 - ab_prev), x0) * n1
    torch.testing.assert_close(x_prev, exp_prev, **TIGHT)
    torch.testing.assert_close(x_t, diff.q_sample_step(exp_prev, t, n2), **TIGHT)
    # t = 0: x_{t-1} is exactly the clean data
    assert torch.equal(x_prev[0], x0[0])
    # t >= 1: x_{t-1} is q_sample at index t-1
    torch.testing.assert_close(x_prev[1:], diff.q_sample(x0[1:], t[1:] - 1, n1[1:]), **TIGHT)


def test_q_sample_pairs_marginal_is_q_sample(diff, ref):
    """x_t of the pair has the law of q_sample(x0, t): mean coef sqrt(ᾱ_t), variance 1-ᾱ_t."""
    t = torch.arange(1000)
    x0 = torch.full((1000, 1), 1.0, dtype=F64)
    zero, one = torch.zeros_like(x0), torch.ones_like(x0)
    # x_t is linear in (x0, n1, n2): read the three coefficients off the method itself
    c_x0 = diff.q_sample_pairs(x0, t, zero, zero)[1]
    c_n1 = diff.q_sample_pairs(x0, t, one, zero)[1] - c_x0
    c_n2 = diff.q_sample_pairs(x0, t, zero, one)[1] - c_x0
    ab = torch.from_numpy(ref["ab"]).reshape(-1, 1)
    torch.testing.assert_close(c_x0, ab.sqrt(), **TIGHT)
    torch.testing.assert_close(c_n1**2 + c_n2**2, 1 - ab, **TIGHT)
    # and the algebra behind it
    a, ab_prev = torch.from_numpy(ref["a"]), torch.from_numpy(ref["ab_prev"])
    torch.testing.assert_close(a.sqrt() * ab_prev.sqrt(), ab.flatten().sqrt(), **TIGHT)
    torch.testing.assert_close(a * (1 - ab_prev) + (1 - a), 1 - ab.flatten(), **TIGHT)


def test_q_sample_pairs_marginal_statistics():
    """Monte-Carlo sanity check of the pair's joint law on a 4-step DDGAN schedule."""
    d = GaussianDiffusion.from_schedule("ddgan_vp", 4)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 2.0, dtype=F64)
    t = torch.full((n,), 2, dtype=torch.long)
    x_prev, x_t = d.q_sample_pairs(
        x0, t, torch.randn(n, 1, generator=g, dtype=F64), torch.randn(n, 1, generator=g, dtype=F64)
    )
    ab, ab_prev, a = d.alphas_cumprod[2], d.alphas_cumprod_prev[2], d.alphas[2]
    assert x_t.mean().item() == pytest.approx(2.0 * ab.sqrt().item(), abs=0.01)
    assert x_t.var().item() == pytest.approx((1 - ab).item(), rel=0.02)
    cov = ((x_t - x_t.mean()) * (x_prev - x_prev.mean())).mean()
    assert cov.item() == pytest.approx((a.sqrt() * (1 - ab_prev)).item(), rel=0.03)


# ----------------------------------------------------------------------------- posterior
def test_posterior_formula(diff, ref):
    x0, x_t, t = _batch(4)
    tn = t.numpy()
    b, a, ab, ab_prev = (ref[k][tn] for k in ("b", "a", "ab", "ab_prev"))
    mean, var, log_var = diff.q_posterior_mean_variance(x0, x_t, t)
    exp_mean = (
        _col(np.sqrt(ab_prev) * b / (1 - ab), x0) * x0
        + _col(np.sqrt(a) * (1 - ab_prev) / (1 - ab), x0) * x_t
    )
    exp_var = (1 - ab_prev) / (1 - ab) * b
    torch.testing.assert_close(mean, exp_mean, **TIGHT)
    torch.testing.assert_close(var, _col(exp_var, x0), **TIGHT)
    # clipped log-variance: log β̃_t for t >= 1, log β̃_1 at t = 0
    full_var = (1 - ref["ab_prev"]) / (1 - ref["ab"]) * ref["b"]
    exp_log = np.log(np.where(tn == 0, full_var[1], full_var[tn]))
    torch.testing.assert_close(log_var, _col(exp_log, x0), **TIGHT)


def test_posterior_at_t0(diff):
    assert diff.posterior_variance[0].item() == 0.0
    assert diff.posterior_mean_coef2[0].item() == 0.0
    assert diff.posterior_mean_coef1[0].item() == pytest.approx(1.0, abs=1e-12)
    assert torch.isfinite(diff.posterior_log_variance_clipped).all()
    x0, x_t, _ = _batch(5)
    t0 = torch.zeros(x0.shape[0], dtype=torch.long)
    mean, var, _ = diff.q_posterior_mean_variance(x0, x_t, t0)
    torch.testing.assert_close(mean, x0, **TIGHT)
    assert torch.all(var == 0)
    # sampling at t = 0 adds no noise
    torch.testing.assert_close(
        diff.q_posterior_sample(x0, x_t, t0, torch.randn_like(x0)), x0, **TIGHT
    )


def test_posterior_single_step_schedule():
    d = GaussianDiffusion(torch.tensor([0.3], dtype=F64))
    assert d.posterior_variance.tolist() == [0.0]
    assert torch.isfinite(d.posterior_log_variance_clipped).all()
    x0, x_t = torch.ones(2, 3, dtype=F64), torch.full((2, 3), 5.0, dtype=F64)
    mean, _, _ = d.q_posterior_mean_variance(x0, x_t, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(mean, x0, **TIGHT)


def test_posterior_mean_is_a_true_posterior(diff):
    """The mean coefficients reproduce E[x_{t-1}|x_t,x0] of the Gaussian pair (x_{t-1}, x_t)."""
    t = torch.arange(1, 1000)
    ab, ab_prev, a = diff.alphas_cumprod[t], diff.alphas_cumprod_prev[t], diff.alphas[t]
    # Given x0: Var x_{t-1} = 1-ᾱ_{t-1}; Cov(x_{t-1}, x_t) = sqrt(α)(1-ᾱ_{t-1}); Var x_t = 1-ᾱ_t
    gain = a.sqrt() * (1 - ab_prev) / (1 - ab)
    torch.testing.assert_close(diff.posterior_mean_coef2[t], gain, **TIGHT)
    torch.testing.assert_close(
        diff.posterior_mean_coef1[t], ab_prev.sqrt() - gain * ab.sqrt(), **TIGHT
    )
    torch.testing.assert_close(
        diff.posterior_variance[t], (1 - ab_prev) - gain * a.sqrt() * (1 - ab_prev), **TIGHT
    )


@pytest.fixture
def hf_noise(monkeypatch):
    """Make diffusers' DDPMScheduler.step use the noise we hand it."""
    box = {}

    def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
        noise = box["noise"]
        assert tuple(noise.shape) == tuple(shape)
        return noise.to(dtype)

    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", fake_randn)
    return box


def test_posterior_equals_diffusers_step_with_x0_prediction(diff, hf_noise):
    x0, x_t, _ = _batch(6, shape=(2, 3, 4, 4))
    hf = _hf64(diff, prediction_type="sample", variance_type="fixed_small")
    g = torch.Generator().manual_seed(1)
    for t in T_CHECK:
        tb = torch.full((2,), t, dtype=torch.long)
        # noiseless: pred_prev_sample is the posterior mean
        hf_noise["noise"] = torch.zeros_like(x_t)
        out = hf.step(x0, t, x_t)
        mean, var, _ = diff.q_posterior_mean_variance(x0, x_t, tb)
        torch.testing.assert_close(out.prev_sample, mean, **TIGHT)
        torch.testing.assert_close(out.pred_original_sample, x0, rtol=0, atol=0)
        # with noise: same sample (fixed_small variance = β̃_t)
        z = torch.randn(x_t.shape, generator=g, dtype=F64)
        hf_noise["noise"] = z
        torch.testing.assert_close(
            diff.q_posterior_sample(x0, x_t, tb, z), hf.step(x0, t, x_t).prev_sample, **TIGHT
        )
        if t > 0:
            torch.testing.assert_close(var.flatten()[0], hf._get_variance(t), **TIGHT)


# ----------------------------------------------------------------------------- parameterisations
def test_eps_x0_round_trip(diff):
    x0, eps, t = _batch(7)
    x_t = diff.q_sample(x0, t, eps)
    torch.testing.assert_close(diff.predict_x0_from_eps(x_t, t, eps), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(diff.predict_eps_from_x0(x_t, t, x0), eps, rtol=1e-9, atol=1e-9)
    # x0 -> eps -> x0 for an arbitrary (not consistent) x0
    other = torch.randn_like(x0)
    back = diff.predict_x0_from_eps(x_t, t, diff.predict_eps_from_x0(x_t, t, other))
    torch.testing.assert_close(back, other, rtol=1e-9, atol=1e-9)


def test_predict_x0_from_eps_closed_form(diff, ref):
    x_t, eps, t = _batch(8)
    ab = ref["ab"][t.numpy()]
    expected = (x_t - _col(np.sqrt(1 - ab), x_t) * eps) / _col(np.sqrt(ab), x_t)
    torch.testing.assert_close(
        diff.predict_x0_from_eps(x_t, t, eps), expected, rtol=1e-11, atol=1e-11
    )


def test_v_definition_and_round_trips(diff, ref):
    x0, eps, t = _batch(9)
    ab = ref["ab"][t.numpy()]
    v = diff.get_v(x0, eps, t)
    torch.testing.assert_close(
        v, _col(np.sqrt(ab), x0) * eps - _col(np.sqrt(1 - ab), x0) * x0, **TIGHT
    )
    torch.testing.assert_close(v, _hf64(diff).get_velocity(x0, eps, t), **TIGHT)
    x_t = diff.q_sample(x0, t, eps)
    torch.testing.assert_close(diff.predict_x0_from_v(x_t, t, v), x0, **TIGHT)
    torch.testing.assert_close(diff.predict_eps_from_v(x_t, t, v), eps, **TIGHT)


def test_training_target(diff):
    x0, eps, t = _batch(10)
    assert diff.training_target("eps", x0, eps, t) is eps
    assert diff.training_target("x0", x0, eps, t) is x0
    torch.testing.assert_close(
        diff.training_target("v", x0, eps, t), diff.get_v(x0, eps, t), rtol=0, atol=0
    )
    with pytest.raises(ConfigError) as err:
        diff.training_target("epsilon", x0, eps, t)
    assert "prediction_type" in str(err.value)
    for name in PREDICTION_TYPES:
        assert name in str(err.value)


@pytest.mark.parametrize("ptype", PREDICTION_TYPES)
def test_to_x0_eps_recovers_truth(diff, ptype):
    x0, eps, t = _batch(11)
    x_t = diff.q_sample(x0, t, eps)
    out = diff.training_target(ptype, x0, eps, t)  # a perfect network
    x0_hat, eps_hat = diff.to_x0_eps(ptype, x_t, t, out)
    # t = 999 amplifies float64 rounding by 1/sqrt(ᾱ) ~ 158 for eps <-> x0
    torch.testing.assert_close(x0_hat, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "ptype,hf_type", [("eps", "epsilon"), ("x0", "sample"), ("v", "v_prediction")]
)
@pytest.mark.parametrize("clip", [None, 1.0])
def test_to_x0_eps_matches_diffusers_pred_original_sample(diff, hf_noise, ptype, hf_type, clip):
    hf = _hf64(diff, prediction_type=hf_type)
    hf.register_to_config(clip_sample=clip is not None, clip_sample_range=clip or 1.0)
    g = torch.Generator().manual_seed(12)
    x_t = torch.randn(2, 3, 4, 4, generator=g, dtype=F64)
    out = 3.0 * torch.randn(2, 3, 4, 4, generator=g, dtype=F64)
    hf_noise["noise"] = torch.zeros_like(x_t)
    for t in T_CHECK:
        tb = torch.full((2,), t, dtype=torch.long)
        x0_hat, eps_hat = diff.to_x0_eps(ptype, x_t, tb, out, clip_x0=clip)
        torch.testing.assert_close(
            x0_hat, hf.step(out, t, x_t).pred_original_sample, rtol=1e-10, atol=1e-10
        )
        if clip is not None:
            assert x0_hat.abs().max() <= clip
        # (x0', ε') always reproduce x_t
        torch.testing.assert_close(diff.q_sample(x0_hat, tb, eps_hat), x_t, rtol=1e-9, atol=1e-9)


def test_to_x0_eps_clip_recomputes_eps(diff):
    g = torch.Generator().manual_seed(13)
    x_t = torch.randn(4, 2, generator=g, dtype=F64)
    t = torch.tensor([5, 100, 600, 999])
    eps_out = 5.0 * torch.randn(4, 2, generator=g, dtype=F64)
    x0_raw, eps_raw = diff.to_x0_eps("eps", x_t, t, eps_out)
    assert eps_raw is eps_out
    assert x0_raw.abs().max() > 1  # the clip below bites
    x0_c, eps_c = diff.to_x0_eps("eps", x_t, t, eps_out, clip_x0=1.0)
    torch.testing.assert_close(x0_c, x0_raw.clamp(-1, 1), rtol=0, atol=0)
    torch.testing.assert_close(eps_c, diff.predict_eps_from_x0(x_t, t, x0_c), rtol=0, atol=0)
    assert not torch.allclose(eps_c, eps_out)


def test_to_x0_eps_invalid_prediction_type(diff):
    x0, eps, t = _batch()
    with pytest.raises(ConfigError, match="prediction_type='sample'.*allowed: eps, x0, v"):
        diff.to_x0_eps("sample", x0, t, eps)


# ----------------------------------------------------------------------------- dtype / device
@pytest.mark.parametrize("cast", ["float", "half", "bfloat16", "to_f32", "double"])
def test_constants_stay_float64_under_module_casts(cast):
    d = GaussianDiffusion.from_schedule("linear", 100)
    before = {k: v.clone() for k, v in d.named_buffers()}
    if cast == "to_f32":
        d.to(torch.float32)
    else:
        getattr(d, cast)()
    for k, v in d.named_buffers():
        assert v.dtype == F64, k
        assert torch.equal(v, before[k]), k
    # the cast module still computes in the input's dtype with float64-accurate constants
    x0 = torch.randn(3, 2)
    t = torch.tensor([0, 50, 99])
    out = d.q_sample(x0, t, torch.zeros_like(x0))
    assert out.dtype == torch.float32
    expected = d.sqrt_alphas_cumprod[t, None].float() * x0  # one rounding of the float64 constant
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_device_moves_keep_float64():
    d = GaussianDiffusion.from_schedule("linear", 10)
    d.to("meta")
    for k, v in d.named_buffers():
        assert v.device.type == "meta", k
        assert v.dtype == F64, k
    d = GaussianDiffusion.from_schedule("linear", 10).to("cpu", torch.float16)
    for k, v in d.named_buffers():
        assert v.device.type == "cpu" and v.dtype == F64, k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_move_keeps_float64():
    d = GaussianDiffusion.from_schedule("linear", 10).cuda().half()
    for _, v in d.named_buffers():
        assert v.is_cuda and v.dtype == F64
    x = torch.randn(2, 3, device="cuda", dtype=torch.float16)
    t = torch.tensor([1, 9], device="cuda")
    assert d.q_sample(x, t).dtype == torch.float16


def test_sample_timesteps(diff):
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = diff.sample_timesteps(10_000, generator=g1)
    b = diff.sample_timesteps(10_000, generator=g2)
    assert torch.equal(a, b)
    assert a.shape == (10_000,) and a.dtype == torch.long
    assert a.min().item() >= 0 and a.max().item() <= 999
    assert a.unique().numel() > 900  # covers the range
