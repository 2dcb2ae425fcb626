"""Gamma noise: the Gamma-DDPM forward process (Nachmani, San Roman, Wolf 2021; seed report §2.3).

With the same β schedule as the Gaussian process and a scale θ0,

    θ_t = sqrt(ᾱ_t) θ0,   k_t = β_t / (ᾱ_t θ0²),   k̄_t = Σ_{i≤t} k_i   (so k̄_t θ_t² = 1 − ᾱ_t),
    x_t = sqrt(ᾱ_t) x0 + (ḡ_t − k̄_t θ_t),   ḡ_t ~ Γ(shape k̄_t, scale θ_t).

The noise has mean 0 and variance 1 − ᾱ_t, as the Gaussian's, and skewness 2 / sqrt(k̄_t). The denoiser
regresses the standardised noise ε = (ḡ_t − k̄_t θ_t) / sqrt(1 − ᾱ_t) = (Γ(k̄_t, 1) − k̄_t) / sqrt(k̄_t), so
every parameterisation (ε, x0, v) and ``to_x0_eps`` are the Gaussian process's. Ancestral sampling keeps
DDPM's mean and variance and replaces the Gaussian z by centred unit-variance Gamma noise
(Γ(k, 1) − k) / sqrt(k) of the shape the forward chain adds over the step (k_t; k̄_t − k̄_s over a skip
t -> s); x_T is centred unit-variance Gamma noise of shape k̄_{T-1}.

Between two timesteps s < t the forward chain adds independent Gamma noise of the same scale,
ḡ_t = (θ_t/θ_s) ḡ_s + Γ(k̄_t − k̄_s, θ_t), so the exact posterior is a Beta thinning (``samplers.GammaDDIMSampler``):

    ḡ_s | ḡ_t, x0 = (θ_s/θ_t) ḡ_t B,   B ~ Beta(k̄_s, k̄_t − k̄_s),   ḡ_t = x_t − sqrt(ᾱ_t) x0 + k̄_t θ_t.

It keeps the Gamma marginals q(x_s | x0) over any sub-sequence; its mean is DDPM's posterior mean and its
variance DDPM's β̃ up to a factor k̄_t/(k̄_t + 1). The seed report's Gamma-DDIM is the case where every step
of the plan satisfies its constraint k_{t+1} = Σ_{i≤t} k_i, i.e. k̄ halves at every step (B ~ Beta(k̄_s, k̄_s)).

Small θ0 makes every shape large and the process nearly Gaussian (θ0 = 0.001, the public config, gives
k_0 = β_0/(ᾱ_0 θ0²) = 100 with the linear schedule: skewness 0.2 at t = 0 and below 0.01 from t ≈ 40).
Shapes reach 1/θ0² · (1/ᾱ_T − 1) (2.5e10 for θ0 = 0.001, T = 1000): draws are made in float64 on the CPU.
"""

from __future__ import annotations

import math

import torch

from siddm_lab.diffusion.gaussian import GaussianDiffusion
from siddm_lab.diffusion.rng import GLOBAL, RandomSource
from siddm_lab.diffusion.schedules import make_betas
from siddm_lab.errors import ConfigError


def standard_gamma(concentration: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Γ(concentration, 1) draws (float64, CPU) from ``generator`` (default: the global RNG).

    ``torch._standard_gamma`` takes no generator: a seed is drawn from ``generator`` and the global CPU RNG
    is forked around the draw, so that the same generator state gives the same numbers."""
    c = concentration.detach().to("cpu", torch.float64)
    if generator is None:
        return torch._standard_gamma(c)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch._standard_gamma(c)


def centred_gamma(shape: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(Γ(k, 1) − k) / sqrt(k): centred, unit-variance Gamma noise of shape parameters ``k`` (float64)."""
    k = shape.detach().to("cpu", torch.float64)
    return (standard_gamma(k, generator) - k) / k.sqrt()


class GammaDiffusion(GaussianDiffusion):
    """The Gaussian process's coefficients with Gamma noise (module docstring). ``theta0`` > 0."""

    noise = "gamma"

    def __init__(self, betas: torch.Tensor, theta0: float = 0.001):
        if isinstance(theta0, bool) or not isinstance(theta0, (int, float)) or not 0 < theta0 < math.inf:
            raise ConfigError(f"noise.theta0={theta0!r} is invalid: expected a finite number > 0")
        super().__init__(betas)
        self.theta0 = float(theta0)
        k = self.betas / (self.alphas_cumprod * self.theta0**2)
        for name, value in {"gamma_k": k, "gamma_k_cumsum": torch.cumsum(k, 0),
                            "gamma_theta": self.alphas_cumprod.sqrt() * self.theta0}.items():
            self.register_buffer(name, value, persistent=False)

    @classmethod
    def from_schedule(cls, name: str, T: int, theta0: float = 0.001, **kwargs) -> GammaDiffusion:
        return cls(make_betas(name, T, **kwargs), theta0)

    def _draw(self, k: torch.Tensor, like: torch.Tensor, rng: RandomSource) -> torch.Tensor:
        gens = rng.generators
        if gens is None:
            z = centred_gamma(k)
        elif not rng.stacked:
            z = centred_gamma(k, gens[0])
        else:
            z = torch.stack([centred_gamma(k[m], g) for m, g in enumerate(gens)])
        return z.to(like.device, like.dtype)

    def noise_like(self, x0: torch.Tensor, t: torch.Tensor, rng: RandomSource = GLOBAL) -> torch.Tensor:
        """The standardised forward noise ε of q(x_t | x0) for every element: (Γ(k̄_t, 1) − k̄_t) / sqrt(k̄_t)."""
        k = self.gamma_k_cumsum[t.cpu().long()]
        k = k.reshape(*t.shape, *((1,) * (x0.dim() - t.dim()))).expand(x0.shape)
        return self._draw(k, x0, rng)

    def step_noise(self, x: torch.Tensor, t: int, generator: torch.Generator | None = None,
                   s: int | None = None) -> torch.Tensor:
        """The reverse step's noise from timestep t to s: centred unit-variance Gamma of the shape the forward
        chain adds between them, k̄_t − k̄_s (k_t for s = t−1 or s unknown)."""
        skip = s is not None and 0 <= s < t - 1
        k = (self.gamma_k_cumsum[t] - self.gamma_k_cumsum[s] if skip else self.gamma_k[t]).expand(x.shape)
        return centred_gamma(k, generator).to(x.device, x.dtype)

    def prior_sample(self, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_T: centred unit-variance Gamma noise of shape k̄_{T−1} (the standardised forward noise at T−1, as
        the Gaussian process starts from N(0, I))."""
        k = self.gamma_k_cumsum[self.num_timesteps - 1].expand(tuple(shape))
        return centred_gamma(k, generator).float()

    def q_sample_pairs(self, *args, **kwargs):
        raise ConfigError("noise=gamma is a DDPM option: the diffusion GANs' pair objectives (SIDDM, DDGAN) are "
                          "defined for Gaussian noise; use noise=gaussian")


def beta_draw(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Beta(a, b) draws (float64, CPU) as X / (X + Y), X ~ Γ(a, 1), Y ~ Γ(b, 1) from ``generator``."""
    x, y = standard_gamma(a, generator), standard_gamma(b, generator)
    return x / (x + y)
