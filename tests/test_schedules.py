"""Noise schedules (siddm_lab.diffusion.schedules) against closed forms and diffusers.

Tolerances: diffusers' DDPMScheduler builds its betas in float32 (its cosine schedule is
computed in Python floats and then cast), so betas are compared to it with rtol 3e-7 (about
2 float32 ulps) and alphas_cumprod, a float32 cumprod over up to 1000 terms, with atol 1e-6.
Against float64 closed forms computed here the tolerance is 1e-12 or tighter.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as hf_rescale

from siddm_lab.diffusion.schedules import (
    SCHEDULES,
    cosine_betas,
    ddgan_vp_betas,
    make_betas,
    rescale_zero_terminal_snr,
    scaled_linear_betas,
)
from siddm_lab.errors import ConfigError

# (our name, diffusers beta_schedule, kwargs shared by both)
DIFFUSERS_CASES = [
    ("linear", "linear", {"beta_start": 1e-4, "beta_end": 0.02}),
    ("linear", "linear", {"beta_start": 5e-4, "beta_end": 0.05}),
    ("scaled_linear", "scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
    ("scaled_linear", "scaled_linear", {"beta_start": 1e-4, "beta_end": 0.02}),
    ("cosine", "squaredcos_cap_v2", {}),
    ("sigmoid", "sigmoid", {"beta_start": 1e-4, "beta_end": 0.02}),
]


def _hf(T: int, schedule: str, **kw) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=T, beta_schedule=schedule, **kw)


# ----------------------------------------------------------------------------- vs diffusers
@pytest.mark.parametrize("T", [1, 2, 10, 1000])
@pytest.mark.parametrize("ours,theirs,kw", DIFFUSERS_CASES)
def test_betas_and_alphas_cumprod_match_diffusers(ours, theirs, kw, T):
    betas = make_betas(ours, T, **kw)
    assert betas.dtype == torch.float64
    assert betas.shape == (T,)
    hf = _hf(T, theirs, **kw)
    torch.testing.assert_close(betas, hf.betas.double(), rtol=3e-7, atol=0)
    ab = torch.cumprod(1.0 - betas, 0)
    torch.testing.assert_close(ab, hf.alphas_cumprod.double(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("T", [1, 4, 50, 1000])
def test_cosine_is_bit_identical_to_diffusers_after_float32_cast(T):
    # diffusers' betas_for_alpha_bar computes in Python floats then casts to float32: the same
    # float64 numbers rounded once must give exactly its tensor.
    assert torch.equal(make_betas("cosine", T).float(), _hf(T, "squaredcos_cap_v2").betas)


# ----------------------------------------------------------------------------- closed forms
def test_linear_closed_form_float64():
    T = 1000
    ref = torch.from_numpy(np.linspace(1e-4, 0.02, T))
    betas = make_betas("linear", T)
    torch.testing.assert_close(betas, ref, rtol=0, atol=1e-15)
    assert betas[0].item() == pytest.approx(1e-4, abs=1e-16)
    assert betas[-1].item() == pytest.approx(0.02, abs=1e-16)


def test_scaled_linear_closed_form():
    T = 37
    ref = torch.from_numpy(np.linspace(math.sqrt(1e-4), math.sqrt(0.02), T) ** 2)
    torch.testing.assert_close(make_betas("scaled_linear", T), ref, rtol=1e-14, atol=0)
    torch.testing.assert_close(scaled_linear_betas(T), ref, rtol=1e-14, atol=0)


def test_quadratic_is_not_a_second_name_for_scaled_linear():
    """ermongroup/ddim's "quad" betas are linspace-of-sqrt squared, scaled_linear's curve: one name only,
    and the old name says which one to use."""
    assert "quadratic" not in SCHEDULES
    with pytest.raises(ConfigError, match=r"schedule.name='quadratic'.*scaled_linear"):
        make_betas("quadratic", 10)


def test_sigmoid_closed_form_float64():
    T = 200
    x = np.linspace(-6.0, 6.0, T)
    ref = torch.from_numpy(1.0 / (1.0 + np.exp(-x)) * (0.02 - 1e-4) + 1e-4)
    torch.testing.assert_close(make_betas("sigmoid", T), ref, rtol=1e-13, atol=0)


def test_cosine_closed_form_and_cap():
    s = 0.008
    for T in (3, 100, 1000):

        def f(t, T=T):
            return math.cos(((t / T + s) / (1 + s)) * math.pi / 2) ** 2

        ab = [f(t) / f(0) for t in range(T + 1)]  # ᾱ(0) = 1
        ref = torch.tensor(
            [min(1 - ab[i + 1] / ab[i], 0.999) for i in range(T)], dtype=torch.float64
        )
        betas = make_betas("cosine", T)
        torch.testing.assert_close(betas, ref, rtol=1e-12, atol=1e-15)
        # ᾱ_t = f(t)/f(0) wherever the cap did not bite
        ab_ours = torch.cumprod(1.0 - betas, 0)
        capped = torch.nonzero(ref >= 0.999).flatten()
        n = int(capped[0]) if capped.numel() else T  # prefix before the first capped beta
        assert n >= T - 1
        torch.testing.assert_close(
            ab_ours[:n], torch.tensor(ab[1 : n + 1], dtype=torch.float64), rtol=1e-11, atol=1e-15
        )
        # the function's own defaults are the make_betas defaults (s = 0.008, cap 0.999)
        torch.testing.assert_close(cosine_betas(T), betas, rtol=0, atol=0)
    # The last cosine beta (f(T) ~ 0) is capped at max_beta.
    assert make_betas("cosine", 1000)[-1].item() == 0.999
    assert cosine_betas(1000, max_beta=0.5)[-1].item() == 0.5
    assert cosine_betas(1000, max_beta=0.5).max().item() == 0.5


# ----------------------------------------------------------------------------- zero terminal SNR
@pytest.mark.parametrize(
    "name,theirs,kw,T",
    [
        ("linear", "linear", {"beta_start": 1e-4, "beta_end": 0.02}, 1000),
        ("scaled_linear", "scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}, 1000),
        ("cosine", "squaredcos_cap_v2", {}, 50),
        ("linear", "linear", {"beta_start": 1e-4, "beta_end": 0.02}, 2),
    ],
)
def test_rescale_zero_terminal_snr_matches_diffusers(name, theirs, kw, T):
    raw = make_betas(name, T, **kw)
    ours = rescale_zero_terminal_snr(raw)
    assert ours.dtype == torch.float64
    # diffusers' function run on the same float64 input: same algorithm, float64 precision.
    torch.testing.assert_close(ours, hf_rescale(raw.clone()), rtol=1e-12, atol=1e-14)
    # and the scheduler's own alphas_cumprod (float32 rescaling: its small betas lose ~1e-3
    # relative precision to cancellation, so only ᾱ is compared, at float32 accuracy)
    hf = _hf(T, theirs, rescale_betas_zero_snr=True, **kw)
    assert hf.betas[-1].item() == 1.0
    torch.testing.assert_close(
        torch.cumprod(1 - ours, 0), hf.alphas_cumprod.double(), rtol=0, atol=1e-6
    )
    # make_betas(zero_terminal_snr=True) is the same thing
    torch.testing.assert_close(
        make_betas(name, T, zero_terminal_snr=True, **kw), ours, rtol=0, atol=0
    )


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid", "ddgan_vp"])
def test_zero_terminal_snr_properties(name):
    T = 4 if name == "ddgan_vp" else 100
    raw = make_betas(name, T)
    betas = make_betas(name, T, zero_terminal_snr=True)
    ab_raw = torch.cumprod(1 - raw, 0)
    ab = torch.cumprod(1 - betas, 0)
    assert ab[-1].item() == 0.0
    assert betas[-1].item() == 1.0
    assert ab[0].item() == pytest.approx(ab_raw[0].item(), rel=1e-13)
    # Algorithm 1: sqrt(ᾱ) is an affine map of the original sqrt(ᾱ)
    s0, sT = ab_raw[0].sqrt(), ab_raw[-1].sqrt()
    ref = (ab_raw.sqrt() - sT) * s0 / (s0 - sT)
    torch.testing.assert_close(ab.sqrt(), ref, rtol=1e-10, atol=1e-12)
    # still a valid, monotone schedule
    assert torch.all(betas > 0) and torch.all(betas <= 1)
    assert torch.all(ab[1:] < ab[:-1])


def test_zero_terminal_snr_needs_two_steps():
    with pytest.raises(ConfigError, match="zero_terminal_snr"):
        make_betas("linear", 1, zero_terminal_snr=True)


# ----------------------------------------------------------------------------- DDGAN VP
def _ddgan_reference(T, beta_min=0.1, beta_max=20.0, geometric=False, eps_small=1e-3):
    """NVlabs/denoising-diffusion-gan get_sigma_schedule, in plain Python floats, minus the 1e-8."""
    ts = [k / T * (1.0 - eps_small) + eps_small for k in range(T + 1)]
    if geometric:
        var = [beta_min * (beta_max / beta_min) ** t for t in ts]
    else:
        var = [
            1.0 - math.exp(2.0 * (-0.25 * t * t * (beta_max - beta_min) - 0.5 * t * beta_min))
            for t in ts
        ]
    ab = [1.0 - v for v in var]
    return [1.0 - ab[k + 1] / ab[k] for k in range(T)]


@pytest.mark.parametrize("T", [1, 2, 4, 8, 16])
def test_ddgan_vp_exact(T):
    betas = make_betas("ddgan_vp", T)
    assert betas.shape == (T,) and betas.dtype == torch.float64
    ref = torch.tensor(_ddgan_reference(T), dtype=torch.float64)
    torch.testing.assert_close(betas, ref, rtol=1e-12, atol=0)
    assert torch.all(betas[1:] > betas[:-1])


def test_ddgan_vp_rounded_values_from_paper_code():
    np.testing.assert_allclose(
        make_betas("ddgan_vp", 4).numpy(), [0.478, 0.849, 0.956, 0.987], atol=5e-4
    )
    np.testing.assert_allclose(make_betas("ddgan_vp", 2).numpy(), [0.921, 0.9995], atol=5e-4)
    # the last beta of T=2 is 0.9995 to 4 decimals, not just "about 1"
    assert make_betas("ddgan_vp", 2)[1].item() == pytest.approx(0.9995, abs=5e-5)


def test_ddgan_vp_custom_range():
    betas = make_betas("ddgan_vp", 4, beta_min=0.5, beta_max=10.0)
    ref = torch.tensor(_ddgan_reference(4, 0.5, 10.0), dtype=torch.float64)
    torch.testing.assert_close(betas, ref, rtol=1e-12, atol=0)
    assert not torch.allclose(betas, make_betas("ddgan_vp", 4))


def test_ddgan_geometric_option():
    # var(t) = βmin (βmax/βmin)^t must stay < 1 for ᾱ = 1 - var to be a valid schedule
    kw = {"beta_min": 0.01, "beta_max": 0.9}
    ref = torch.tensor(_ddgan_reference(4, geometric=True, **kw), dtype=torch.float64)
    torch.testing.assert_close(ddgan_vp_betas(4, geometric=True, **kw), ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        make_betas("ddgan_vp", 4, geometric=True, **kw), ref, rtol=1e-12, atol=0
    )
    assert not torch.allclose(ref, torch.tensor(_ddgan_reference(4, **kw), dtype=torch.float64))


def test_ddgan_geometric_with_vp_defaults_is_rejected():
    # 0.1·200^t exceeds 1 (ᾱ < 0): make_betas must refuse rather than return betas > 1.
    raw = ddgan_vp_betas(4, geometric=True)
    assert (raw > 1).any()
    with pytest.raises(ConfigError, match="ddgan_vp"):
        make_betas("ddgan_vp", 4, geometric=True)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_is_valid(name):
    for T in (1, 4, 1000):
        betas = make_betas(name, T)
        assert betas.shape == (T,)
        assert torch.all(betas > 0) and torch.all(betas <= 1)
        assert torch.all(torch.isfinite(betas))


def test_unknown_schedule_lists_allowed_names():
    with pytest.raises(ConfigError) as err:
        make_betas("cosin", 10)
    msg = str(err.value)
    assert "schedule.name" in msg and "'cosin'" in msg
    for name in SCHEDULES:
        assert name in msg


@pytest.mark.parametrize("T", [0, -3, "abc", 2.5, True, None])
def test_bad_T_raises_config_error(T):
    with pytest.raises(ConfigError, match="diffusion.steps"):
        make_betas("linear", T)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "sigmoid"])
@pytest.mark.parametrize(
    "start,end", [(0.02, 0.02), (0.02, 1e-4), (0.0, 0.02), (1e-4, 1.0), (-1e-4, 0.02)]
)
def test_bad_beta_range_raises_naming_keys(name, start, end):
    with pytest.raises(ConfigError) as err:
        make_betas(name, 10, beta_start=start, beta_end=end)
    msg = str(err.value)
    assert "beta_start" in msg and "beta_end" in msg and name in msg


@pytest.mark.parametrize("bmin,bmax", [(20.0, 0.1), (0.1, 0.1), (0.0, 20.0)])
def test_bad_ddgan_range_raises(bmin, bmax):
    with pytest.raises(ConfigError, match="ddgan_vp"):
        make_betas("ddgan_vp", 4, beta_min=bmin, beta_max=bmax)


def test_config_error_is_value_error():
    with pytest.raises(ValueError):
        make_betas("nope", 4)
