"""Diagnostics of a learned x0-predictor against the process (no Lightning)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from siddm_lab.diffusion.rng import GLOBAL, RandomSource
from siddm_lab.errors import ConfigError


@torch.no_grad()
def latent_spread(x0_of: Callable, diffusion, x0: torch.Tensor, t: int, k: int = 16,
                  generator: torch.Generator | None = None) -> dict[str, float]:
    """How much of a diffusion GAN's x0 error its latent carries, at timestep ``t``.

    One x_t ~ q(x_t | x0) per image; ``x0_of(x_t, t)`` (a fresh latent at every call, e.g. the generator's
    ``denoiser().x0``) is evaluated for ``k`` latents of each x_t. Per pixel, with m the mean of the k
    predictions x0':

    * ``mse`` = E ||x0' − x0||²;
    * ``latent_var`` = E Var_z x0' (unbiased over the k latents);
    * ``mean_error`` = E ||m − x0||² − latent_var / k: the error of the latent-averaged prediction
      E_z x0', without the noise of averaging only k latents.

    A generator that draws x0' from the true posterior p(x0 | x_t) has ``latent_var`` = ``mean_error`` =
    E Var(x0 | x_t), so ``ratio`` = latent_var / mean_error ≈ 1; one that returns the posterior mean E[x0 | x_t]
    (a regressor that ignores its latent) has ``ratio`` = 0. It is what q(x_{t-1} | x_t) asks of a generator
    whose x'_{t-1} is drawn from the posterior q(x_{t-1} | x_t, x0') (DDGAN's and SIDDM's parameterisation).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ConfigError(f"k={k!r} is invalid: the latent's variance needs k >= 2 latents per x_t")
    T = diffusion.num_timesteps
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < T:
        raise ConfigError(f"t={t!r} is invalid: expected a timestep in 0..{T - 1}")
    b = x0.shape[0]
    tt = torch.full((b,), t, dtype=torch.long, device=x0.device)
    # the process's own forward noise (standard normal, or e.g. the gamma process's standardised gamma)
    noise = diffusion.noise_like(x0, tt, GLOBAL if generator is None else RandomSource.single(generator))
    x_t = diffusion.q_sample(x0, tt, noise).to(x0.dtype)
    pred = x0_of(x_t.repeat(k, *[1] * (x0.dim() - 1)), tt.repeat(k)).reshape(k, *x0.shape).double()
    target = x0.double()
    mse = (pred - target).pow(2).mean()
    latent_var = pred.var(dim=0, unbiased=True).mean()
    mean_error = (pred.mean(0) - target).pow(2).mean() - latent_var / k
    return {"t": t, "mse": float(mse), "latent_var": float(latent_var), "mean_error": float(mean_error),
            "ratio": float(latent_var / mean_error)}
