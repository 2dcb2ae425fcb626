"""The generator and discriminator of the SIDDM authors' released 2-D toy code (REFERENCES §5).

Both take continuous time t ∈ [0, 1], embedded as positional features of 1000·t (frequency
shift 1) followed by Linear-LeakyReLU(0.2)-Linear and a LeakyReLU:

* ``SkipMLPGenerator``: x0' = Linear(2d -> d)([MLP([x_{t+}, temb(t+), z]), x_{t+}]), a learned skip from
  x_{t+}; the MLP has ``num_layers`` SiLU hidden layers of ``hidden`` units.
* ``MLPDiscriminator``: logits = Linear(hidden -> num_logits)(MLP([x, temb(t), x_cond])) with
  ``num_layers`` SiLU hidden layers; x_cond is x_{t+} for a joint (DDGAN) discriminator and zeros
  otherwise, so the input layer is the same in every mode (the released code multiplies x_{t+} by
  0 or 1). ``num_logits = 2`` as released: two real/fake scores per sample, averaged by the loss.

Shapes: any leading dims (x [..., d], t [...]), so an ensemble of these nets
(``siddm_lab.nets.ensemble``) runs them on [E, B, d] batches.
"""

from __future__ import annotations

import torch
from torch import nn

from siddm_lab.errors import ConfigError
from siddm_lab.nets.checks import check_int, check_number
from siddm_lab.nets.discriminator import DiscriminatorOutput
from siddm_lab.nets.embeddings import sinusoidal_embedding

# The released embedding's frequency shift of 1 divides by dim/2 - 1: dim >= 4.
RELEASED_MIN_TIME_DIM = 4


def _check(prefix: str, time_dim: int, time_scale: float, **widths: int) -> None:
    for key, v in widths.items():
        check_int(f"{prefix}.{key}", v, 1)
    check_int(f"{prefix}.time_dim", time_dim, RELEASED_MIN_TIME_DIM)
    check_number(f"{prefix}.time_scale", time_scale, lambda v: v > 0, "a positive number")


class ReleasedTimeEmbedding(nn.Module):
    """act(Linear(act(Linear(pos(scale·t))))) with act = LeakyReLU(0.2)."""

    def __init__(self, dim: int = 128, scale: float = 1000.0):
        super().__init__()
        self.dim, self.scale = dim, scale
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.2), nn.Linear(dim, dim))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.act(self.mlp(sinusoidal_embedding(t * self.scale, self.dim, downscale_freq_shift=1.0)))


def _mlp(in_dim: int, hidden: int, num_layers: int, out_dim: int | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.SiLU()]
    if out_dim is not None:
        layers.append(nn.Linear(hidden, out_dim))
    return nn.Sequential(*layers)


class SkipMLPGenerator(nn.Module):
    """G(x_{t+}, t+, z) -> x0' (defaults: the released toy generator)."""

    def __init__(self, data_dim: int = 2, cond_dim: int = 2, hidden: int = 100, num_layers: int = 3,
                 time_dim: int = 128, time_scale: float = 1000.0):
        super().__init__()
        _check("net", time_dim, time_scale, data_dim=data_dim, cond_dim=cond_dim, hidden=hidden, num_layers=num_layers)
        self.data_dim, self.cond_dim = data_dim, cond_dim
        self.time_embed = ReleasedTimeEmbedding(time_dim, time_scale)
        self.decode = _mlp(data_dim + time_dim + cond_dim, hidden, num_layers, data_dim)
        self.out = nn.Linear(2 * data_dim, data_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None:
            raise ValueError(f"SkipMLPGenerator expects a latent z of size {self.cond_dim}")
        h = self.decode(torch.cat([x, self.time_embed(t), cond], dim=-1))
        return self.out(torch.cat([h, x], dim=-1))


class MLPDiscriminator(nn.Module):
    """D(x, t, x_cond) -> logits [..., num_logits] (defaults: the released toy discriminator)."""

    def __init__(self, data_dim: int = 2, hidden: int = 100, num_layers: int = 4, time_dim: int = 128,
                 num_logits: int = 2, time_scale: float = 1000.0, joint: bool = False, cond_head: bool = False,
                 aux_head: bool = False):
        super().__init__()
        if cond_head or aux_head:
            raise ConfigError("MLPDiscriminator has only the real/fake head (the released toy code has no C_ψ or "
                              "D_aux); use discriminator=mlp for the paper objective's extra heads")
        _check("discriminator", time_dim, time_scale, data_dim=data_dim, hidden=hidden, num_layers=num_layers,
               num_logits=num_logits)
        self.joint, self.data_dim, self.num_logits = joint, data_dim, num_logits
        self.time_embed = ReleasedTimeEmbedding(time_dim, time_scale)
        self.encode = _mlp(2 * data_dim + time_dim, hidden, num_layers, None)
        self.logit = nn.Linear(hidden, num_logits)

    def forward(self, x, t, x_cond=None, heads: tuple[str, ...] = ("logit",)) -> DiscriminatorOutput:
        if set(heads) - {"logit"}:
            raise ValueError(f"MLPDiscriminator has no {sorted(set(heads) - {'logit'})} head")
        if x_cond is None:
            if self.joint:
                raise ValueError("a joint (DDGAN) discriminator needs x_t")
            x_cond = torch.zeros_like(x)
        h = self.encode(torch.cat([x, self.time_embed(t), x_cond], dim=-1))
        return DiscriminatorOutput(logit=self.logit(h))
