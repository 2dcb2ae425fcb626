"""Time-conditioned MLP for 2-D (or any flat) data."""

from __future__ import annotations

import torch
from torch import nn

from siddm_lab.nets.checks import check_int, check_number
from siddm_lab.nets.embeddings import TimestepEmbedding


class TimeMLP(nn.Module):
    """f(x_t, t) -> R^data_dim: residual SiLU MLP with the time embedding added to every block.

    Args:
        data_dim: dimension of x (2 for the toy data).
        hidden: width of the hidden layers.
        num_layers: number of hidden residual blocks.
        time_dim: size of the sinusoidal time features.
        cond_dim: size of an extra conditioning vector concatenated to the input (0 = none);
            the SIDDM/DDGAN generator feeds its latent z here.
        time_scale: t is embedded as sinusoids of time_scale·t (1 for integer timesteps, 1000 for
            continuous t in [0, 1]).
    """

    def __init__(self, data_dim: int = 2, hidden: int = 256, num_layers: int = 3, time_dim: int = 64,
                 cond_dim: int = 0, time_scale: float = 1.0):
        super().__init__()
        for key, v in (("data_dim", data_dim), ("hidden", hidden), ("num_layers", num_layers)):
            check_int(f"net.{key}", v, 1)
        check_int("net.time_dim", time_dim, 2)  # one sin/cos pair at least
        check_int("net.cond_dim", cond_dim, 0)
        check_number("net.time_scale", time_scale, lambda v: v > 0, "a positive number")
        self.data_dim = data_dim
        self.cond_dim = cond_dim
        self.time_embed = TimestepEmbedding(time_dim, hidden, scale=time_scale)
        self.inp = nn.Linear(data_dim + cond_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(num_layers)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, data_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is not None:
            x = torch.cat([x, cond], dim=-1)
        elif self.cond_dim:
            raise ValueError(f"this TimeMLP expects a conditioning vector of size {self.cond_dim}")
        temb = self.time_embed(t)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + temb)
        return self.out(h)
