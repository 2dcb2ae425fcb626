"""Timestep embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0,
                         downscale_freq_shift: float = 0.0) -> torch.Tensor:
    """Transformer/DDPM sinusoidal embedding of (possibly fractional) timesteps t [...] -> [..., dim]:
    sin and cos of t·max_period^(-i/(half - downscale_freq_shift)), i = 0..half-1 (the shift is 1 in
    the SIDDM/DDGAN reference code, 0 in the DDPM UNet; diffusers calls it the same)."""
    half = dim // 2
    exponent = torch.arange(half, device=t.device, dtype=torch.float32) / (half - downscale_freq_shift)
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = t.float()[..., None] * freqs
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Sinusoidal features followed by a two-layer MLP (as in the DDPM UNet)."""

    def __init__(self, dim: int, out_dim: int, scale: float = 1.0):
        super().__init__()
        self.dim = dim
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t * self.scale, self.dim))
