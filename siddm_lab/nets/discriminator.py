"""Discriminators for DDGAN / SIDDM on flat (2-D toy) data.

``TimeDiscriminator`` sees x_{t-1} (and, for DDGAN's joint discriminator, x_t concatenated) with
a time embedding, and has up to three heads on a shared trunk (SIDDM, REFERENCES §5):
  * ``logit``: real/fake;
  * ``cond``: the conditional estimator C_ψ(x_{t-1}, t) ≈ E[x_t | x_{t-1}] of the AFD entropy term;
  * ``aux``: D_aux(x_{t-1}, t) ≈ x0, the discriminator regulariser's reconstruction head.
Heads that a mode does not use are not built, so every parameter takes part in a loss (plain DDP).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from siddm_lab.nets.checks import check_group_norm, check_int, check_int_list, check_number
from siddm_lab.nets.embeddings import TimestepEmbedding


@dataclass
class DiscriminatorOutput:
    logit: torch.Tensor
    cond: torch.Tensor | None = None
    aux: torch.Tensor | None = None


class TimeDiscriminator(nn.Module):
    """Args: ``data_dim``; ``hidden``/``num_layers`` of the LeakyReLU MLP trunk; ``joint`` adds x_t
    to the input (DDGAN); ``cond_head``/``aux_head`` build SIDDM's extra heads; ``time_scale`` as TimeMLP's."""

    def __init__(self, data_dim: int = 2, hidden: int = 256, num_layers: int = 3, time_dim: int = 64,
                 joint: bool = False, cond_head: bool = False, aux_head: bool = False, time_scale: float = 1.0):
        super().__init__()
        check_int("discriminator.data_dim", data_dim, 1)
        check_int("discriminator.hidden", hidden, 1)
        check_int("discriminator.num_layers", num_layers, 0)
        check_int("discriminator.time_dim", time_dim, 2)  # one sin/cos pair at least
        check_number("discriminator.time_scale", time_scale, lambda v: v > 0, "a positive number")
        self.joint = joint
        self.time_embed = TimestepEmbedding(time_dim, hidden, scale=time_scale)
        in_dim = data_dim * (2 if joint else 1)
        self.inp = nn.Linear(in_dim, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(hidden, hidden))
                                    for _ in range(num_layers))
        self.logit = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(hidden, 1))
        self.cond = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(hidden, data_dim)) if cond_head else None
        self.aux = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(hidden, data_dim)) if aux_head else None

    def trunk(self, x_prev: torch.Tensor, t: torch.Tensor, x_t: torch.Tensor | None = None) -> torch.Tensor:
        if self.joint:
            if x_t is None:
                raise ValueError("a joint (DDGAN) discriminator needs x_t")
            x_prev = torch.cat([x_prev, x_t], dim=-1)
        h = self.inp(x_prev) + self.time_embed(t)
        for block in self.blocks:
            h = h + block(h)
        return h

    def forward(self, x_prev, t, x_t=None, heads: tuple[str, ...] = ("logit",)) -> DiscriminatorOutput:
        h = self.trunk(x_prev, t, x_t)
        out = DiscriminatorOutput(logit=self.logit(h).squeeze(-1) if "logit" in heads else None)
        if "cond" in heads:
            if self.cond is None:
                raise ValueError("this discriminator has no conditional-estimator head (cond_head=False)")
            out.cond = self.cond(h)
        if "aux" in heads:
            if self.aux is None:
                raise ValueError("this discriminator has no reconstruction head (aux_head=False)")
            out.aux = self.aux(h)
        return out


class ConvDiscriminator(nn.Module):
    """Image discriminator for DDGAN / SIDDM: a down-sampling conv encoder (GroupNorm, LeakyReLU) with
    an additive time embedding per stage, and the same heads as ``TimeDiscriminator``.

    The ``cond`` and ``aux`` heads predict images (x_t and x0) with a small decoder on the encoder's
    first-stage features, so they stay spatial. ``joint`` concatenates x_t on channels (DDGAN).
    ``norm_groups``: GroupNorm groups, min(norm_groups, C) over C channels.
    ``mbstd_group``: minibatch standard deviation before the logit (as DDGAN's discriminators and
    StyleGAN2: one feature map holding the features' standard deviation over groups of this many
    samples, so the logit sees the batch's variety and mode collapse is penalised); 0 = off.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 32, ch: int = 64, channel_mult=(1, 2, 2),
                 time_dim: int = 128, joint: bool = False, cond_head: bool = False, aux_head: bool = False,
                 norm_groups: int = 32, mbstd_group: int = 0):
        super().__init__()
        for key, v in (("in_channels", in_channels), ("image_size", image_size), ("time_dim", time_dim),
                       ("norm_groups", norm_groups)):
            check_int(f"discriminator.{key}", v, 1)
        check_int("discriminator.mbstd_group", mbstd_group, 0)
        self.mbstd_group = mbstd_group
        check_int("discriminator.ch", ch, 2)  # the time embedding's sinusoids: one sin/cos pair at least
        channel_mult = check_int_list("discriminator.channel_mult", channel_mult, 1)
        # GroupNorms: before each stage (the stem's ch, then each stage's output but the last) and in the heads
        check_group_norm("discriminator", ch, channel_mult, [ch] + [ch * m for m in channel_mult[:-1]], norm_groups)
        self.joint = joint
        self.time_embed = TimestepEmbedding(ch, time_dim)
        c_in = in_channels * (2 if joint else 1)
        self.stem = nn.Conv2d(c_in, ch, 3, padding=1)
        self.stages = nn.ModuleList()
        self.temb = nn.ModuleList()
        cur = ch
        for mult in channel_mult:
            out = ch * mult
            self.stages.append(nn.Sequential(nn.GroupNorm(min(norm_groups, cur), cur), nn.LeakyReLU(0.2),
                                             nn.Conv2d(cur, out, 3, stride=2, padding=1)))
            self.temb.append(nn.Linear(time_dim, out))
            cur = out
        self.logit = nn.Sequential(nn.LeakyReLU(0.2), nn.Flatten(), nn.LazyLinear(1))

        def decoder():
            return nn.Sequential(nn.GroupNorm(min(norm_groups, ch), ch), nn.LeakyReLU(0.2),
                                 nn.Conv2d(ch, in_channels, 3, padding=1))

        self.cond = decoder() if cond_head else None
        self.aux = decoder() if aux_head else None
        with torch.no_grad():  # materialise the lazy layer
            s = image_size
            self.forward(torch.zeros(1, in_channels, s, s), torch.zeros(1, dtype=torch.long),
                         torch.zeros(1, in_channels, s, s) if joint else None)

    def forward(self, x_prev, t, x_t=None, heads: tuple[str, ...] = ("logit",)) -> DiscriminatorOutput:
        if self.joint:
            if x_t is None:
                raise ValueError("a joint (DDGAN) discriminator needs x_t")
            x_prev = torch.cat([x_prev, x_t], dim=1)
        emb = torch.nn.functional.silu(self.time_embed(t))
        h0 = self.stem(x_prev)
        h = h0
        for stage, proj in zip(self.stages, self.temb):
            h = stage(h) + proj(emb)[:, :, None, None]
        if self.mbstd_group:
            h = minibatch_stddev(h, self.mbstd_group)
        out = DiscriminatorOutput(logit=self.logit(h).squeeze(-1) if "logit" in heads else None)
        for name in ("cond", "aux"):
            if name in heads:
                head = getattr(self, name)
                if head is None:
                    raise ValueError(f"this discriminator has no '{name}' head")
                setattr(out, name, head(h0))
        return out


def minibatch_stddev(h: torch.Tensor, group: int) -> torch.Tensor:
    """Append one channel: the standard deviation of each feature over groups of ``group`` samples
    (the largest divisor of the batch not above ``group``), averaged over features and positions and
    broadcast to the group's members (Karras et al. 2018; DDGAN's discriminators use group 4)."""
    b, c, hh, ww = h.shape
    g = max(d for d in range(1, min(group, b) + 1) if b % d == 0)
    y = h.reshape(g, b // g, c, hh, ww)
    y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt()  # [b/g, c, H, W]
    y = y.mean((1, 2, 3)).reshape(b // g, 1, 1, 1).repeat(g, 1, hh, ww)
    return torch.cat([h, y], dim=1)
