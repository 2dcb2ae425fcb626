"""Timestep sub-sequences for few-step sampling (DDIM §4.2, diffusers' spacings, the seed report).

Each function returns the timesteps in sampling order (decreasing), 0-indexed (0..T-1, see
``schedules``). The network is evaluated once per element, so ``len(seq)`` is the NFE.
Where the papers' 1-indexed sequences end at "T" (e.g. ``[0..99, 1000]``), the last index T-1
is used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from siddm_lab.errors import ConfigError

log = logging.getLogger(__name__)

SUBSEQUENCES = ("full", "uniform", "leading", "linspace", "trailing", "quadratic", "karras", "exponential", "last_k",
                "first_k_last_k", "explicit")
# Spacings take S (sampler.steps); the others fix their own length.
SPACINGS = ("uniform", "leading", "linspace", "trailing", "quadratic", "karras")
# Spacings whose first timestep is T-1 at every S (S = 1 is one step from noise, not the step t = 0).
FROM_NOISE = ("trailing", "karras")


def _check_S(T: int, S, name: str) -> int:
    if isinstance(S, bool) or not isinstance(S, int) or not 1 <= S <= T:
        raise ConfigError(f"sampler.steps={S!r} is invalid for subsequence '{name}': expected an integer in 1..{T} "
                          f"(T=diffusion.steps={T})")
    return S


def full(T: int) -> list[int]:
    return list(range(T - 1, -1, -1))


def uniform(T: int, S: int) -> list[int]:
    """ermongroup/ddim "uniform": range(0, T, T // S) (may hold a few more than S when S ∤ T)."""
    S = _check_S(T, S, "uniform")
    return list(range(0, T, T // S))[::-1]


def leading(T: int, S: int, offset: int = 0) -> list[int]:
    """diffusers "leading": arange(0, S) · (T // S) + steps_offset."""
    S = _check_S(T, S, "leading")
    seq = [i * (T // S) + offset for i in range(S)]
    if seq[-1] >= T:
        raise ConfigError(f"subsequence 'leading' with offset={offset} exceeds T-1={T - 1}")
    return seq[::-1]


def linspace(T: int, S: int) -> list[int]:
    """diffusers "linspace": round(linspace(0, T-1, S))."""
    S = _check_S(T, S, "linspace")
    return [int(v) for v in np.linspace(0, T - 1, S).round()][::-1]


def trailing(T: int, S: int) -> list[int]:
    """diffusers "trailing": round(arange(T, 0, -T/S)) - 1 (starts at T-1).

    Only the first S elements are kept: the float ``arange`` yields S+1 elements ending at -1 for some S
    (T=1000: S=61, 103, 121, ...; diffusers has this defect).
    """
    S = _check_S(T, S, "trailing")
    return [int(v) for v in (np.round(np.arange(T, 0, -T / S)[:S]) - 1).astype(np.int64)]


def quadratic(T: int, S: int) -> list[int]:
    """DDIM paper / ermongroup "quad": [int(s) for s in linspace(0, sqrt(0.8 T), S)²].

    Ends at 0.8T and repeats timesteps for large S (S=50 -> 49 distinct, S=100 -> 96 for T=1000).
    """
    S = _check_S(T, S, "quadratic")
    return [int(v) for v in np.linspace(0, math.sqrt(T * 0.8), S) ** 2][::-1]


def karras(alphas_cumprod, S: int, rho: float = 7.0) -> list[int]:
    """EDM's noise-level spacing (Karras et al. 2022, eq. 5) on a discrete process: S levels
    σ_i = (σ_max^(1/ρ) + i/(S-1) · (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, i = 0..S-1, from σ_max = σ_(T-1) down to
    σ_min = σ_0 of the process (σ_t = sqrt((1 − ᾱ_t)/ᾱ_t)), each taken to the timestep of nearest log σ (the model
    takes integer timesteps; diffusers' ``use_karras_sigmas`` interpolates fractional timesteps in log σ, whose
    rounding is this). S = 1 is the single step from T-1. ρ = 7 is EDM's; larger ρ packs the steps closer to σ_min.
    """
    if alphas_cumprod is None:
        raise ConfigError("subsequence 'karras' spaces the process's noise levels σ_t and needs a discrete-time "
                          "Gaussian process (ᾱ_t); this model has none: use another subsequence")
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0 < rho < math.inf:
        raise ConfigError(f"subsequence.rho={rho!r} is invalid: expected a positive number (EDM's ρ, 7)")
    if hasattr(alphas_cumprod, "detach"):  # a torch tensor, on any device
        alphas_cumprod = alphas_cumprod.detach().cpu().double().numpy()
    ab = np.asarray(alphas_cumprod, dtype=np.float64)
    T = len(ab)
    S = _check_S(T, S, "karras")
    if not ab[-1] > 0:
        raise ConfigError("subsequence 'karras' needs a finite σ_max, and this process has zero terminal SNR "
                          "(ᾱ_(T-1) = 0, σ = inf): use subsequence=trailing")
    log_sigma = 0.5 * (np.log1p(-ab) - np.log(ab))
    if S == 1:
        return [T - 1]
    lo, hi = math.exp(log_sigma[0]) ** (1 / rho), math.exp(log_sigma[-1]) ** (1 / rho)
    levels = (hi + np.linspace(0, 1, S) * (lo - hi)) ** rho
    # σ_t increases with t: the nearest timestep in log σ of each level
    return [int(np.argmin(np.abs(log_sigma - math.log(s)))) for s in levels]


def exponential(T: int) -> list[int]:
    """Seed report's "Exp": 0, 1, 2, 4, ..., 2^k < T-1, then T-1 (12 steps for T=1000)."""
    seq = [0]
    p = 1
    while p < T - 1:
        seq.append(p)
        p *= 2
    if seq[-1] != T - 1:
        seq.append(T - 1)
    return seq[::-1]


def last_k(T: int, k: int = 100) -> list[int]:
    """The k least-noisy steps plus the first one: [0..k-1, T-1] (seed report's "Last 100")."""
    if not 1 <= k < T:
        raise ConfigError(f"subsequence.k={k} is invalid for last_k: expected 1..{T - 1}")
    return sorted(set(range(k)) | {T - 1}, reverse=True)


def first_k_last_k(T: int, k: int = 100) -> list[int]:
    """[0..k-1] ∪ [T-k..T-1] (seed report's "First100Last100")."""
    if not 1 <= k <= T // 2:
        raise ConfigError(f"subsequence.k={k} is invalid for first_k_last_k: expected 1..{T // 2}")
    return sorted(set(range(k)) | set(range(T - k, T)), reverse=True)


def explicit(T: int, timesteps: Sequence[int]) -> list[int]:
    """A user-given list, in any order (sorted here; each element must be an integer in 0..T-1)."""
    try:
        ts = [int(t) for t in timesteps if not isinstance(t, bool) and int(t) == t]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"subsequence.timesteps={list(timesteps)!r} is not a list of integers") from e
    if len(ts) != len(list(timesteps)) or not ts:
        raise ConfigError(f"subsequence.timesteps={list(timesteps)!r} must be a non-empty list of integers")
    bad = [t for t in ts if not 0 <= t < T]
    if bad:
        raise ConfigError(f"subsequence.timesteps holds {bad}, outside 0..{T - 1} (T=diffusion.steps={T})")
    return sorted(ts, reverse=True)


def make_timesteps(name: str, T: int, S: int | None = None, *, k: int = 100, offset: int = 0,
                   timesteps: Sequence[int] | None = None, keep_duplicates: bool = False, rho: float = 7.0,
                   alphas_cumprod=None) -> list[int]:
    """The decreasing timestep sequence of a named sub-sequence (the ``subsequence`` config group);
    ``alphas_cumprod`` (the process's ᾱ, T values) is what ``karras`` spaces.

    Repeated timesteps (quadratic spacing with large S) are removed with a warning, unless
    ``keep_duplicates`` asks for the reference code's behaviour (a repeat is a no-op step that
    still costs a network call).
    """
    if name == "full":
        seq = full(T)
    elif name == "uniform":
        seq = uniform(T, S)
    elif name == "leading":
        seq = leading(T, S, offset)
    elif name == "linspace":
        seq = linspace(T, S)
    elif name == "trailing":
        seq = trailing(T, S)
    elif name == "quadratic":
        seq = quadratic(T, S)
    elif name == "karras":
        if alphas_cumprod is not None and len(alphas_cumprod) != T:
            raise ValueError(f"alphas_cumprod has {len(alphas_cumprod)} values for T={T}")
        seq = karras(alphas_cumprod, S, rho)
    elif name == "exponential":
        seq = exponential(T)
    elif name == "last_k":
        seq = last_k(T, k)
    elif name == "first_k_last_k":
        seq = first_k_last_k(T, k)
    elif name == "explicit":
        if timesteps is None:
            raise ConfigError("subsequence 'explicit' needs subsequence.timesteps=[t1,t2,...]")
        seq = explicit(T, timesteps)
    else:
        raise ConfigError(f"subsequence.name={name!r} is unknown; allowed: {', '.join(SUBSEQUENCES)}")
    if len(set(seq)) != len(seq) and not keep_duplicates:
        distinct = sorted(set(seq), reverse=True)
        log.warning("subsequence '%s' with S=%s repeats timesteps: %d of %d are distinct; the repeats are removed "
                    "(NFE %d). Set subsequence.keep_duplicates=true for the reference behaviour.",
                    name, S, len(distinct), len(seq), len(distinct))
        seq = distinct
    return seq


def plan(T: int, steps: int | None, spec=None, alphas_cumprod=None) -> tuple[str, list[int]]:
    """(name, timesteps) of a sampler's plan: S = ``steps`` timesteps of the sub-sequence ``spec``
    (a ``make_timesteps`` spec: ``{"name": ..., <its options>}``; default uniform), on the process whose ᾱ is
    ``alphas_cumprod`` (needed by ``karras`` only).

    ``steps`` null runs a spacing over every timestep (reported as ``full``: that is what runs) and a
    fixed sequence (exponential, last_k, first_k_last_k, explicit) at its own length; a fixed sequence
    given an S is refused, as is a spacing whose single step (S = 1) would start at t = 0 instead of
    from noise.
    """
    spec = dict(spec or {})
    name = spec.pop("name", "uniform")
    if name not in SUBSEQUENCES:
        raise ConfigError(f"subsequence.name={name!r} is unknown; allowed: {', '.join(SUBSEQUENCES)}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"sampler.steps={steps!r} is invalid: expected null or a positive integer")
    if steps is not None and steps > T:
        raise ConfigError(f"sampler.steps={steps} is larger than the schedule (T={T}); allowed: 1..{T}")
    if steps is None and name in SPACINGS:
        name = "full"
    if name not in SPACINGS and name != "full" and steps is not None:
        n = len(make_timesteps(name, T, None, **spec))
        if steps != n:
            raise ConfigError(f"subsequence '{name}' has its own length ({n} timesteps for T={T}) and takes no "
                              f"sampler.steps (got {steps}); set sampler.steps=null")
    if steps == 1 and name in SPACINGS and name not in FROM_NOISE:
        raise ConfigError(f"sampler.steps=1 with subsequence '{name}' is the single step t=0, which skips the "
                          f"whole reverse process; a one-step sampler starts at T-1: subsequence=trailing")
    if name == "full":
        spec = {k: v for k, v in spec.items() if k == "keep_duplicates"}
    seq = make_timesteps(name, T, steps, **spec, alphas_cumprod=alphas_cumprod)
    if name == "uniform" and len(seq) != steps:
        exact = [n for n in ("leading", "linspace", "trailing") if len(make_timesteps(n, T, steps)) == steps]
        log.warning("subsequence 'uniform' with sampler.steps=%d runs %d steps on T=%d (range(0, T, T//S) with "
                    "T//S=%d); what ran is recorded (steps=%d, steps_requested=%d). Spacings that run exactly %d "
                    "steps: %s", steps, len(seq), T, T // steps, len(seq), steps, steps, ", ".join(exact))
    return name, seq
