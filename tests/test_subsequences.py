"""Timestep sub-sequences (siddm_lab.diffusion.subsequences) against ermongroup/ddim, diffusers'
DDIMScheduler.set_timesteps and the seed report's sequences (REFERENCES §2)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from siddm_lab.diffusion import subsequences as ss
from siddm_lab.diffusion.gaussian import GaussianDiffusion
from siddm_lab.diffusion.samplers import DDIMSampler, sample_loop, validate_timesteps
from siddm_lab.errors import ConfigError

T = 1000


def _hf_timesteps(spacing: str, S: int, T: int = T, offset: int = 0) -> list[int]:
    s = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
    s.set_timesteps(S)
    return s.timesteps.tolist()


# ----------------------------------------------------------------------------- uniform
@pytest.mark.parametrize("S", [10, 50, 100, 3, 1, 1000])
def test_uniform_is_reference_skip(S):
    seq = ss.uniform(T, S)
    assert seq == list(range(0, T, T // S))[::-1]
    assert seq[-1] == 0 and validate_timesteps(seq, T) == seq


def test_uniform_nfe_is_length():
    assert ss.uniform(T, 3) == [999, 666, 333, 0]  # S ∤ T: 4 steps for S = 3
    assert len(ss.uniform(T, 10)) == 10
    d = GaussianDiffusion.from_schedule("linear", T)
    calls = []

    def predict(x, t):
        calls.append(int(t[0]))
        return d.to_x0_eps("eps", x, t, 0.1 * x)

    seq = ss.make_timesteps("uniform", T, 3)
    sample_loop(predict, DDIMSampler(d, 0.0), torch.randn(2, 3, dtype=torch.float64), seq)
    assert calls == seq and len(calls) == 4  # NFE = len(seq)


# ----------------------------------------------------------------------------- diffusers spacings
@pytest.mark.parametrize("S", [1, 3, 7, 10, 13, 50, 100, 250, 999, 1000])
@pytest.mark.parametrize("name", ["leading", "linspace", "trailing"])
def test_spacings_equal_diffusers(name, S):
    seq = getattr(ss, name)(T, S)
    assert seq == _hf_timesteps(name, S)
    assert len(seq) == S and validate_timesteps(seq, T) == seq


@pytest.mark.parametrize("S", [10, 50, 7])
def test_leading_offset_equals_steps_offset(S):
    seq = ss.leading(T, S, offset=1)
    assert seq == _hf_timesteps("leading", S, offset=1)
    assert seq == [t + 1 for t in ss.leading(T, S)]
    assert ss.make_timesteps("leading", T, S, offset=1) == seq


def test_leading_offset_past_the_end():
    with pytest.raises(ConfigError, match="offset"):
        ss.leading(T, 1000, offset=1)


def test_leading_equals_uniform_when_S_divides_T():
    for S in (1, 10, 50, 100, 1000):
        assert ss.leading(T, S) == ss.uniform(T, S)
    assert ss.leading(T, 3) == [666, 333, 0] and len(ss.uniform(T, 3)) == 4


def test_known_values():
    assert ss.linspace(T, 10) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert ss.trailing(T, 10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert ss.trailing(T, 3) == [999, 666, 332]
    assert ss.leading(T, 10) == list(range(900, -1, -100))


@pytest.mark.parametrize("T_", [1000, 999, 100, 7, 4, 1])
def test_spacings_have_exactly_S_valid_steps_for_every_S(T_):
    """diffusers' trailing spacing builds arange(T, 0, -T/S) in floating point, which for some S
    (T=1000: S = 61, 103, 121, ...) holds S+1 elements ending at -1; ours keeps exactly S."""
    for S in range(1, T_ + 1):
        for name in ("leading", "linspace", "trailing"):
            seq = getattr(ss, name)(T_, S)
            assert len(seq) == S, (name, S)
            validate_timesteps(seq, T_)
        validate_timesteps(ss.uniform(T_, S), T_)
        validate_timesteps(ss.quadratic(T_, S), T_, allow_repeats=True)


@pytest.mark.parametrize("S", [61, 103, 121])
def test_trailing_drops_diffusers_spurious_last_step(S):
    hf = _hf_timesteps("trailing", S)
    assert len(hf) == S + 1 and hf[-1] == -1  # the diffusers defect
    assert ss.trailing(T, S) == hf[:S]


# ----------------------------------------------------------------------------- quadratic
@pytest.mark.parametrize("S", [10, 20, 50, 100])
def test_quadratic_is_reference_formula(S):
    expected = [int(s) for s in np.linspace(0, np.sqrt(T * 0.8), S) ** 2]  # ermongroup/ddim runners/diffusion.py
    seq = ss.quadratic(T, S)
    assert seq == expected[::-1]
    assert len(seq) == S and seq[-1] == 0
    assert seq[0] == int(math.sqrt(0.8 * T) ** 2) == 800  # ends at 0.8T, not T-1
    validate_timesteps(seq, T, allow_repeats=True)


def test_quadratic_repeats():
    assert len(set(ss.quadratic(T, 10))) == 10
    assert len(set(ss.quadratic(T, 50))) == 49
    assert len(set(ss.quadratic(T, 100))) == 96


# ----------------------------------------------------------------------------- seed-report sequences
def test_exponential():
    seq = ss.exponential(T)
    assert seq == [999, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1, 0]
    assert len(seq) == 12
    assert ss.exponential(1024) == [1023, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1, 0]
    assert ss.exponential(514) == [513, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1, 0]
    assert ss.exponential(2) == [1, 0] and ss.exponential(1) == [0]
    for T_ in (1, 2, 3, 5, 100, 513, 4000):
        validate_timesteps(ss.exponential(T_), T_)
    assert ss.make_timesteps("exponential", T) == seq


def test_last_k():
    seq = ss.last_k(T)
    assert len(seq) == 101
    assert seq == [999] + list(range(99, -1, -1))
    assert ss.last_k(T, 10) == [999] + list(range(9, -1, -1))
    assert ss.last_k(10, 9) == list(range(9, -1, -1))  # k = T-1: all steps, T-1 not repeated
    assert ss.make_timesteps("last_k", T, k=5) == [999, 4, 3, 2, 1, 0]
    for k in (0, T, -1):
        with pytest.raises(ConfigError, match="subsequence.k"):
            ss.last_k(T, k)


def test_first_k_last_k():
    seq = ss.first_k_last_k(T)
    assert len(seq) == 200
    assert seq == list(range(999, 899, -1)) + list(range(99, -1, -1))
    assert ss.first_k_last_k(10, 5) == list(range(9, -1, -1))
    assert ss.make_timesteps("first_k_last_k", T, k=2) == [999, 998, 1, 0]
    for k in (0, 501):
        with pytest.raises(ConfigError, match="subsequence.k"):
            ss.first_k_last_k(T, k)


def test_explicit():
    assert ss.explicit(T, [0, 500, 999, 20]) == [999, 500, 20, 0]
    assert ss.explicit(T, (5,)) == [5]
    assert ss.explicit(T, np.array([3, 1, 2])) == [3, 2, 1]
    assert ss.explicit(T, [3.0, 1]) == [3, 1]
    assert ss.make_timesteps("explicit", T, timesteps=[10, 700, 300]) == [700, 300, 10]


@pytest.mark.parametrize("bad", [[], [0, 1000], [-1, 5], [2.5, 1], ["a", 1], ["5"], [None], [True, 3]],
                         ids=["empty", "too_large", "negative", "fraction", "string", "numeric_string", "none", "bool"])
def test_explicit_rejects(bad):
    with pytest.raises(ConfigError, match="subsequence.timesteps"):
        ss.explicit(T, bad)


def test_explicit_needs_timesteps():
    with pytest.raises(ConfigError, match="subsequence.timesteps"):
        ss.make_timesteps("explicit", T)


# ----------------------------------------------------------------------------- make_timesteps
def test_make_timesteps_dispatch():
    assert ss.make_timesteps("full", T) == list(range(T - 1, -1, -1))
    for name in ("uniform", "leading", "linspace", "trailing", "quadratic"):
        assert ss.make_timesteps(name, T, 10) == getattr(ss, name)(T, 10)
    kwargs = {"explicit": {"timesteps": [1, 2]},
              "karras": {"alphas_cumprod": GaussianDiffusion.from_schedule("linear", T).alphas_cumprod}}
    for name in ss.SUBSEQUENCES:  # every advertised name is handled
        seq = ss.make_timesteps(name, T, 20, **kwargs.get(name, {}))
        assert validate_timesteps(seq, T) == seq


def test_make_timesteps_removes_duplicates_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger=ss.__name__):
        seq = ss.make_timesteps("quadratic", T, 100)
    assert seq == sorted(set(ss.quadratic(T, 100)), reverse=True) and len(seq) == 96
    assert validate_timesteps(seq, T) == seq
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == ss.__name__]
    assert len(warnings) == 1
    assert "96 of 100" in warnings[0].getMessage() and "keep_duplicates" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=ss.__name__):
        kept = ss.make_timesteps("quadratic", T, 100, keep_duplicates=True)
        assert ss.make_timesteps("quadratic", T, 10) == ss.quadratic(T, 10)  # no repeats: no warning
        assert ss.make_timesteps("explicit", T, timesteps=[5, 5, 1]) == [5, 1]
    assert kept == ss.quadratic(T, 100) and len(kept) == 100
    repeats = [r.getMessage() for r in caplog.records if r.name == ss.__name__ and "repeats" in r.getMessage()]
    assert len(repeats) == 1 and "2 of 3" in repeats[0]  # only the explicit [5, 5, 1] warned


def test_make_timesteps_unknown_name():
    with pytest.raises(ConfigError, match="subsequence.name") as e:
        ss.make_timesteps("cubic", T, 10)
    for name in ss.SUBSEQUENCES:
        assert name in str(e.value)


@pytest.mark.parametrize("S", [0, -3, 1001, 10.0, 10.5, "10", None, True])
@pytest.mark.parametrize("name", ["uniform", "leading", "linspace", "trailing", "quadratic"])
def test_make_timesteps_bad_steps(name, S):
    with pytest.raises(ConfigError, match="sampler.steps"):
        ss.make_timesteps(name, T, S)


# ----------------------------------------------------------------------------- karras (EDM's σ spacing)
def _hf_karras(d: GaussianDiffusion, S: int) -> np.ndarray:
    from diffusers import EulerDiscreteScheduler

    s = EulerDiscreteScheduler(num_train_timesteps=d.num_timesteps, trained_betas=d.betas.float().tolist(),
                               use_karras_sigmas=True)
    s.set_timesteps(S)
    return s.timesteps.double().numpy()


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("S", [2, 4, 10, 18, 50])
def test_karras_is_diffusers_karras_sigmas_at_the_nearest_integer_timestep(schedule, S):
    """diffusers' use_karras_sigmas gives the EDM levels as fractional timesteps (interpolated in log σ); ours are
    those rounded, i.e. the timestep of nearest log σ (a level half-way between two timesteps may go either way)."""
    d = GaussianDiffusion.from_schedule(schedule, T)
    ours = np.array(ss.karras(d.alphas_cumprod, S))
    hf = _hf_karras(d, S)
    assert len(ours) == S and ours[0] == T - 1 and ours[-1] == 0 and np.all(np.diff(ours) <= 0)
    off = ours != np.round(hf)
    assert np.all(np.abs(ours - hf) <= 0.5 + 1e-3) and np.all(np.abs(np.abs(ours - hf)[off] - 0.5) < 1e-2)


def test_karras_closed_form_and_rho():
    """S = 3 on a process with σ_t = e^(t-2) ... : the middle level is ((σ_max^(1/ρ) + σ_min^(1/ρ)) / 2)^ρ."""
    sigma = np.exp(np.linspace(-3.0, 3.0, 61))  # σ_t, t = 0..60, log σ in steps of 0.1
    ab = 1 / (1 + sigma ** 2)
    for rho in (1.0, 3.0, 7.0):
        mid = ((sigma[-1] ** (1 / rho) + sigma[0] ** (1 / rho)) / 2) ** rho
        expected = int(np.argmin(np.abs(np.log(sigma) - np.log(mid))))
        assert ss.karras(ab, 3, rho) == [60, expected, 0]
    # ρ = 1 is uniform in σ, so the middle level sits near the top in log σ; larger ρ moves it down
    assert ss.karras(ab, 3, 1.0)[1] > ss.karras(ab, 3, 7.0)[1] > ss.karras(ab, 3, 100.0)[1]
    assert ss.karras(ab, 1) == [60]  # one step from noise


def test_karras_refusals():
    d = GaussianDiffusion.from_schedule("linear", T)
    with pytest.raises(ConfigError, match="needs a discrete-time Gaussian process"):
        ss.karras(None, 4)
    with pytest.raises(ConfigError, match=r"subsequence.rho=0 is invalid: expected a positive number"):
        ss.karras(d.alphas_cumprod, 4, rho=0)
    with pytest.raises(ConfigError, match=r"sampler.steps=0 is invalid for subsequence 'karras'"):
        ss.karras(d.alphas_cumprod, 0)
    zsnr = d.alphas_cumprod.clone()
    zsnr[-1] = 0
    with pytest.raises(ConfigError, match="zero terminal SNR"):
        ss.karras(zsnr, 4)
    with pytest.raises(ConfigError, match="needs a discrete-time Gaussian process"):
        ss.plan(T, 4, {"name": "karras"})  # a plan without the process's ᾱ


def test_karras_plan_runs_in_ddim_and_removes_repeats(caplog):
    """The samplers pass their process's ᾱ: DDIM runs the Karras plan; on cosine (σ_max ≈ 2·10⁴) the levels near
    σ_max fall on the same timesteps, which are removed with a warning (NFE below S)."""
    d = GaussianDiffusion.from_schedule("linear", T)
    s = DDIMSampler(d, 0.0, steps=10, subsequence={"name": "karras", "rho": 7.0})
    assert s.timesteps == ss.karras(d.alphas_cumprod, 10) and s.subsequence == "karras" and s.nfe == 10
    cosine = GaussianDiffusion.from_schedule("cosine", T)
    with caplog.at_level(logging.WARNING):
        c = DDIMSampler(cosine, 0.0, steps=10, subsequence={"name": "karras"})
    assert c.timesteps == sorted(set(ss.karras(cosine.alphas_cumprod, 10)), reverse=True) and c.nfe < 10
    assert "repeats timesteps" in caplog.text
