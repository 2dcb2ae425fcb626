"""Continuous-time cosine diffusion of the SIDDM authors' released toy code (REFERENCES §5).

Time t lies in [0, 1] and ᾱ(t) = cos²((t + s)/(1 + s) · π/2) (s = 0.008, the cosine of Nichol &
Dhariwal without the normalisation by ᾱ(0), so ᾱ(0) = 0.99984 and the data is never exactly clean).
A T-step model is trained on pairs (x_t, x_{t+}) with

    t+ ~ U(t_min, 1),   t = max(t+ − 1/T, 0),   x_t ~ q(x_t | x0),
    x_{t+} = sqrt(1 − β) x_t + sqrt(β) ε,  β = 1 − ᾱ(t+)/ᾱ(t)   (one forward step),

and sampled with K steps at t+ = i/K, t = (i−1)/K, i = K..1: the generator predicts x0' from
x_{t+}, the posterior q(x_t | x_{t+}, x0') gives the next state, and the last step returns x0'.
K need not equal T (the released script evaluates K = 1..T).

The methods mirror ``GaussianDiffusion``'s pair interface (``sample_times``, ``q_sample_pairs``,
``q_posterior_sample``, ``q_sample_step``, ``q_step_coefficients``, ``prev_time``) with ``t`` the later
time t+ of the pair; ``t_prev`` defaults to max(t − 1/T, 0). Shapes as in ``gaussian``: t [B] or [E, B].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from siddm_lab.diffusion.schedules import check_steps
from siddm_lab.errors import ConfigError


def _bc(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """v [*t.shape] -> broadcastable against x, in x's dtype."""
    return v.to(x.dtype).reshape(*v.shape, *((1,) * (x.dim() - v.dim())))


class CosineContinuousTime(nn.Module):
    """Args: ``T``: pairs are 1/T apart in time (the model's number of sampling steps);
    ``s``: the cosine offset; ``t_min``: the smallest training t+ (the released 1e-4)."""

    continuous = True
    noise = "gaussian"

    def __init__(self, T: int, s: float = 0.008, t_min: float = 1e-4, noise=None):
        super().__init__()
        if (noise or {}).get("name", "gaussian") != "gaussian":
            raise ConfigError(f"noise={(noise or {}).get('name')}: schedule=cosine_continuous is the diffusion GANs' "
                              f"Gaussian process; Gamma noise is a DDPM option (use a discrete schedule)")
        check_steps(T)
        if not 0.0 <= s < 1.0 or not 0.0 <= t_min < 1.0:
            raise ConfigError(f"schedule.s and schedule.t_min must lie in [0, 1), got s={s}, t_min={t_min}")
        self.T, self.s, self.t_min = T, float(s), float(t_min)

    @property
    def num_timesteps(self) -> int:
        return self.T

    # ------------------------------------------------------------------ schedule
    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ(t) = cos²((t + s)/(1 + s) · π/2), the cosine clipped to [0, 1] first (as released)."""
        return torch.cos((t + self.s) / (1 + self.s) * math.pi / 2).clamp(0.0, 1.0) ** 2

    def prev_time(self, t: torch.Tensor) -> torch.Tensor:
        return (t - 1.0 / self.T).clamp(min=0.0)

    def sample_times(self, rng, x0: torch.Tensor) -> torch.Tensor:
        """t+ ~ U(0, 1) clipped below at t_min, one per sample."""
        return rng.rand(rng.batch_shape(x0), device=x0.device).clamp(self.t_min, 1.0)

    def _beta(self, t_prev, t):
        return 1.0 - self.alpha_bar(t) / self.alpha_bar(t_prev)

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(ᾱ(t)) x0 + sqrt(1 − ᾱ(t)) ε."""
        ab = _bc(self.alpha_bar(t), x0)
        noise = torch.randn_like(x0) if noise is None else noise
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def q_step_coefficients(self, t: torch.Tensor, like: torch.Tensor, t_prev: torch.Tensor | None = None):
        """(sqrt(1−β), sqrt(β)) of the step t_prev -> t, β = 1 − ᾱ(t)/ᾱ(t_prev)."""
        beta = _bc(self._beta(self.prev_time(t) if t_prev is None else t_prev, t), like)
        return (1 - beta).sqrt(), beta.sqrt()

    def q_sample_step(self, x_prev, t, noise=None, t_prev=None):
        """x_t ~ q(x_t | x_{t_prev}) = N(sqrt(1−β) x_{t_prev}, β I)."""
        a, b = self.q_step_coefficients(t, x_prev, t_prev)
        noise = torch.randn_like(x_prev) if noise is None else noise
        return a * x_prev + b * noise

    def q_sample_pairs(self, x0, t, noise_prev=None, noise_step=None):
        """(x_{t_prev}, x_t): x_{t_prev} ~ q(·|x0), then one forward step to t."""
        x_prev = self.q_sample(x0, self.prev_time(t), noise_prev)
        return x_prev, self.q_sample_step(x_prev, t, noise_step)

    # ------------------------------------------------------------------ posterior
    def q_posterior_mean_variance(self, x0, x_t, t, t_prev=None):
        """Mean and variance of q(x_{t_prev} | x_t, x0)."""
        t_prev = self.prev_time(t) if t_prev is None else t_prev
        ab_prev, ab = _bc(self.alpha_bar(t_prev), x_t), _bc(self.alpha_bar(t), x_t)
        beta = 1 - ab / ab_prev
        coef_x0 = ab_prev.sqrt() * beta / (1 - ab)
        coef_xt = (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)
        return coef_x0 * x0 + coef_xt * x_t, (1 - ab_prev) / (1 - ab) * beta

    def q_posterior_sample(self, x0, x_t, t, noise=None, t_prev=None):
        """x_{t_prev} ~ q(x_{t_prev} | x_t, x0); noise is added at every step, t_prev = 0 included
        (ᾱ(0) < 1), as in the released code."""
        mean, var = self.q_posterior_mean_variance(x0, x_t, t, t_prev)
        noise = torch.randn_like(x_t) if noise is None else noise
        return mean + var.sqrt() * noise
