"""2-D toy distributions: Gaussian grids (25-Gaussians), 8-Gaussians ring, Swiss roll.

Each distribution draws samples with an explicit ``torch.Generator`` and, when it is a
mixture, exposes ``centers`` [K, 2] and the per-component ``std`` used by the mode metrics.
"""

from __future__ import annotations

import math

import torch

from siddm_lab.errors import ConfigError


class ToyDistribution:
    name = "toy"
    centers: torch.Tensor | None = None
    std: float | None = None
    data_dim = 2

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError


class GaussianGrid(ToyDistribution):
    """An n×n grid of equally weighted isotropic Gaussians.

    Centres are ``(offset + spacing·i, offset + spacing·j)`` for i, j = 0..n-1. With ``clamp``
    the per-point offsets ε·std are clipped to [-clamp, clamp] (the SIDDM authors' toy data).

    The two standard variants (see ``conf/dataset``):
      * ``gaussians25``: centres at (-2..2)/sqrt(2) so the data has unit variance, std 0.05
        (the common normalised 25-Gaussians benchmark).
      * ``gaussians25_siddm``: SIDDM's released toy code: centres (5i, 5j), offsets
        randn/3 clamped to [-1, 1], the same number of points per mode (``balanced``).
    """

    def __init__(self, n: int = 5, spacing: float = 1 / math.sqrt(2), offset: float | None = None,
                 std: float = 0.05, clamp: float | None = None, balanced: bool = False):
        if n < 1 or spacing <= 0 or std <= 0 or (clamp is not None and clamp <= 0):
            raise ConfigError(f"GaussianGrid needs n >= 1, spacing > 0, std > 0, clamp > 0 or None (got n={n}, "
                              f"spacing={spacing}, std={std}, clamp={clamp})")
        if offset is None:  # centre the grid on the origin
            offset = -spacing * (n - 1) / 2
        g = offset + spacing * torch.arange(n, dtype=torch.float32)
        self.centers = torch.cartesian_prod(g, g)
        self.std = float(std)
        self.clamp = clamp
        self.balanced = bool(balanced)
        self.name = f"gaussians{n * n}"

    def sample(self, n, generator=None):
        k = len(self.centers)
        if self.balanced:  # n/K points per mode (the released SIDDM data), in random order
            idx = torch.arange(k).repeat_interleave(-(-n // k))[torch.randperm(k * -(-n // k), generator=generator)][:n]
        else:
            idx = torch.randint(0, k, (n,), generator=generator)
        eps = torch.randn(n, 2, generator=generator) * self.std
        if self.clamp is not None:
            eps = eps.clamp(-self.clamp, self.clamp)
        return self.centers[idx] + eps


class GaussianRing(ToyDistribution):
    """K Gaussians equally spaced on a circle (the 8-Gaussians ring: k=8, radius sqrt(2))."""

    def __init__(self, k: int = 8, radius: float = math.sqrt(2), std: float = 0.02):
        if k < 1 or radius <= 0 or std <= 0:
            raise ConfigError(f"GaussianRing needs k >= 1, radius > 0, std > 0 (got {k}, {radius}, {std})")
        ang = 2 * math.pi * torch.arange(k, dtype=torch.float32) / k
        self.centers = radius * torch.stack([ang.cos(), ang.sin()], dim=1)
        self.std = float(std)
        self.name = f"ring{k}"

    def sample(self, n, generator=None):
        idx = torch.randint(0, len(self.centers), (n,), generator=generator)
        return self.centers[idx] + torch.randn(n, 2, generator=generator) * self.std


class SwissRoll(ToyDistribution):
    """sklearn-style Swiss roll in 2-D: t ~ 1.5π(1+2u), x = (t cos t, t sin t)·scale + noise."""

    name = "swissroll"

    def __init__(self, noise: float = 0.5, scale: float = 1 / 7.5):
        if noise < 0 or scale <= 0:
            raise ConfigError(f"SwissRoll needs noise >= 0 and scale > 0 (got {noise}, {scale})")
        self.noise = noise
        self.scale = scale

    def sample(self, n, generator=None):
        t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
        x = torch.stack([t * t.cos(), t * t.sin()], dim=1)
        x = x + self.noise * torch.randn(n, 2, generator=generator)
        return x * self.scale
