"""Samplers: reverse-process updates over a decreasing timestep sequence.

A sampler is independent of the network: the loop calls ``predict(x_t, t) -> (x0', ε')`` (a
trained DDPM's denoiser converted by ``GaussianDiffusion.to_x0_eps`` or a SIDDM generator), so
the same sampler serves every model. Each update uses the actual next element ``s`` of the
sequence (``s = -1`` is the clean data, ᾱ_{-1} := 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from siddm_lab.diffusion.gaussian import VARIANCE_TYPES, GaussianDiffusion
from siddm_lab.errors import ConfigError

PredictFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _alpha_bar(diffusion: GaussianDiffusion, t: int) -> torch.Tensor:
    if t < 0:
        return torch.ones((), dtype=torch.float64)
    return diffusion.alphas_cumprod[t].detach().cpu()


def full_timesteps(T: int) -> list[int]:
    """T-1, T-2, ..., 0."""
    return list(range(T - 1, -1, -1))


class AncestralSampler:
    """DDPM ancestral sampling x_t -> x_s ~ N(μ̃(x_t, x0'), σ²) with s the next timestep.

    With β' = 1 - ᾱ_t/ᾱ_s (= β_t when s = t-1):
      μ̃ = sqrt(ᾱ_s) β'/(1-ᾱ_t) · x0' + sqrt(1-β') (1-ᾱ_s)/(1-ᾱ_t) · x_t
      σ² = (1-ᾱ_s)/(1-ᾱ_t) β'  ("fixed_small", β̃)  or  β'  ("fixed_large", σ̂ of DDIM).
    No noise is added on the last step (s = -1).
    """

    def __init__(self, diffusion: GaussianDiffusion, variance_type: str = "fixed_small"):
        if variance_type not in VARIANCE_TYPES:
            raise ConfigError(
                f"sampler.variance_type={variance_type!r} is unknown; allowed: {', '.join(VARIANCE_TYPES)}"
            )
        self.diffusion = diffusion
        self.variance_type = variance_type

    def coefficients(self, t: int, s: int) -> tuple[float, float, float]:
        """(coef_x0, coef_xt, std) of the update t -> s, computed in float64."""
        ab_t, ab_s = _alpha_bar(self.diffusion, t), _alpha_bar(self.diffusion, s)
        beta = 1.0 - ab_t / ab_s
        coef_x0 = ab_s.sqrt() * beta / (1.0 - ab_t)
        coef_xt = (1.0 - beta).sqrt() * (1.0 - ab_s) / (1.0 - ab_t)
        if s < 0:
            var = torch.zeros((), dtype=torch.float64)
        elif self.variance_type == "fixed_small":
            var = (1.0 - ab_s) / (1.0 - ab_t) * beta
        else:
            var = beta
        return float(coef_x0), float(coef_xt), float(var.clamp_min(0).sqrt())

    def step(self, x_t, t: int, s: int, x0, eps, noise=None):
        coef_x0, coef_xt, std = self.coefficients(t, s)
        x_s = coef_x0 * x0 + coef_xt * x_t
        if std > 0:
            if noise is None:
                noise = torch.randn_like(x_t)
            x_s = x_s + std * noise
        return x_s


def validate_timesteps(timesteps: Sequence[int], T: int) -> list[int]:
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ConfigError("the timestep sequence is empty; it needs at least one step")
    if any(t < 0 or t >= T for t in ts):
        raise ConfigError(f"timesteps must lie in 0..{T - 1} for a schedule of T={T} steps, got {ts}")
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ConfigError(f"timesteps must be strictly decreasing, got {ts}")
    return ts


@torch.no_grad()
def sample_loop(
    predict: PredictFn,
    sampler,
    x_T: torch.Tensor,
    timesteps: Sequence[int],
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run ``sampler`` from x_T over ``timesteps`` (decreasing), returning the final x0."""
    ts = validate_timesteps(timesteps, sampler.diffusion.num_timesteps)
    nxt = ts[1:] + [-1]
    x = x_T
    it = zip(ts, nxt)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(ts), desc="sampling", leave=False)
    for t, s in it:
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0, eps = predict(x, t_batch)
        noise = None
        if s >= 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = sampler.step(x, t, s, x0, eps, noise)
    return x


def uniform_timesteps(T: int, S: int) -> list[int]:
    """ermongroup/ddim "uniform" skip: range(0, T, T // S), returned in sampling (decreasing) order.

    It may hold a few more than S steps when T is not a multiple of S; its length is the NFE.
    """
    if not 1 <= S <= T:
        raise ConfigError(f"the number of sampling steps must be in 1..{T} (T={T}), got {S}")
    return list(range(0, T, T // S))[::-1]
