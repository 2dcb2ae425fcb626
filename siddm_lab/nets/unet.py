"""DDPM-style UNet (Ho et al. 2020; layout of the official TF code and diffusers' UNet2DModel).

ResNet blocks with GroupNorm(32)/SiLU and an additive time embedding, self-attention at chosen
resolutions, dropout, ``channel_mult`` per resolution. An optional conditioning vector
(``cond_dim``) modulates every block by adaptive group norm (scale/shift), which is how the
DDGAN/SIDDM generator injects its latent z.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from siddm_lab.errors import ConfigError
from siddm_lab.nets.checks import check_group_norm, check_int, check_int_list, check_number
from siddm_lab.nets.embeddings import TimestepEmbedding


def _norm(ch: int, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, ch), ch, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, cond_dim: int = 0, groups: int = 32):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = _norm(out_ch, groups)
        self.cond = nn.Linear(cond_dim, 2 * out_ch) if cond_dim else None
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, emb, cond=None):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.norm2(h)
        if self.cond is not None:
            scale, shift = self.cond(cond)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    def __init__(self, ch: int, heads: int = 1, groups: int = 32):
        super().__init__()
        self.norm = _norm(ch, groups)
        self.heads = heads
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, *_):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x, *_):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, *_):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _norm_channels(ch: int, channel_mult: list[int], num_res_blocks: int) -> list[int]:
    """The channel counts the UNet's GroupNorms see, in the order ``UNet.__init__`` builds them: each
    ResBlock's input and output (on the way up the input is the level's channels plus its skip's), and
    the middle blocks'."""
    counts, skips, cur = [], [ch], ch
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            counts += [cur, ch * mult]
            cur = ch * mult
            skips.append(cur)
        if level != len(channel_mult) - 1:
            skips.append(cur)
    counts.append(cur)  # the middle blocks
    for mult in reversed(channel_mult):
        for _ in range(num_res_blocks + 1):
            counts += [cur + skips.pop(), ch * mult]
            cur = ch * mult
    return counts


def _check_size(image_size: int, channel_mult: list[int]) -> None:
    factor = 2 ** (len(channel_mult) - 1)
    if image_size % factor:
        halvings = (image_size & -image_size).bit_length() - 1  # times image_size can be halved exactly
        raise ConfigError(
            f"net.image_size={image_size} is not divisible by 2**(len(net.channel_mult)-1)={factor}: the UNet "
            f"halves the image {len(channel_mult) - 1} times (net.image_size follows dataset.image_size); allowed: "
            f"an image size that is a multiple of {factor}, or a net.channel_mult with at most {halvings + 1} "
            f"entries for this size")


class UNet(nn.Module):
    """f(x_t, t[, cond]) -> same shape as x_t.

    Args:
        in_channels / out_channels: image channels.
        image_size: spatial size; must be divisible by 2**(len(channel_mult)-1).
        ch: base channels; ``channel_mult`` multiplies it per resolution.
        num_res_blocks: ResBlocks per resolution.
        attn_resolutions: resolutions (in pixels) that get self-attention.
        dropout: dropout in ResBlocks (DDPM CIFAR-10: 0.1).
        cond_dim: size of a conditioning vector applied by adaptive group norm (0 = none).
        norm_groups: GroupNorm groups (min(norm_groups, C) over C channels; 32 as in DDPM). Narrow nets
            (ch 16, the CPU-scale MNIST GANs) need fewer, e.g. 8.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        image_size: int = 32,
        ch: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        heads: int = 1,
        cond_dim: int = 0,
        norm_groups: int = 32,
    ):
        super().__init__()
        for key, v in (("in_channels", in_channels), ("image_size", image_size), ("ch", ch), ("heads", heads),
                       ("norm_groups", norm_groups)):
            check_int(f"net.{key}", v, 1)
        if out_channels is not None:
            check_int("net.out_channels", out_channels, 1)
        channel_mult = check_int_list("net.channel_mult", channel_mult, 1, non_empty=True)
        attn_resolutions = check_int_list("net.attn_resolutions", attn_resolutions or [], 1)
        check_int("net.num_res_blocks", num_res_blocks, 0)
        check_int("net.cond_dim", cond_dim, 0)
        check_number("net.dropout", dropout, lambda v: 0 <= v < 1, "a number in [0, 1)")
        _check_size(image_size, channel_mult)
        level_res = [image_size // 2**level for level in range(len(channel_mult))]
        unmatched = [r for r in attn_resolutions if r not in level_res]
        if unmatched:  # they would be dropped silently: no level gets attention at that resolution
            raise ConfigError(f"net.attn_resolutions={list(attn_resolutions)} holds {unmatched}, the resolution of no "
                              f"level of this UNet: its levels are {level_res} pixels (net.image_size={image_size} "
                              f"halved per further entry of net.channel_mult); allowed: a list of these, or [] "
                              f"(attention in the middle block only)")
        check_group_norm("net", ch, channel_mult, _norm_channels(ch, channel_mult, num_res_blocks), norm_groups)
        # attention: the middle block's, and that of each level whose resolution is in attn_resolutions
        mid = ch * channel_mult[-1] if num_res_blocks else ch
        attn_channels = sorted({mid} | {ch * m for level, m in enumerate(channel_mult)
                                        if image_size // 2**level in attn_resolutions})
        if any(c % heads for c in attn_channels):
            raise ConfigError(f"net.heads={heads} does not divide the channels of the attention blocks "
                              f"({', '.join(map(str, attn_channels))}); allowed: a common divisor of these")
        out_channels = out_channels or in_channels
        levels = len(channel_mult)
        self.cond_dim = cond_dim
        emb_dim = 4 * ch
        self.time_embed = TimestepEmbedding(ch, emb_dim)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        chans = [ch]
        cur, res = ch, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                blocks = [ResBlock(cur, ch * mult, emb_dim, dropout, cond_dim, norm_groups)]
                cur = ch * mult
                if res in attn_resolutions:
                    blocks.append(AttnBlock(cur, heads, norm_groups))
                self.down.append(nn.ModuleList(blocks))
                chans.append(cur)
            if level != levels - 1:
                self.down.append(nn.ModuleList([Downsample(cur)]))
                chans.append(cur)
                res //= 2

        self.mid = nn.ModuleList(
            [ResBlock(cur, cur, emb_dim, dropout, cond_dim, norm_groups), AttnBlock(cur, heads, norm_groups),
             ResBlock(cur, cur, emb_dim, dropout, cond_dim, norm_groups)]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                blocks = [ResBlock(cur + chans.pop(), ch * mult, emb_dim, dropout, cond_dim, norm_groups)]
                cur = ch * mult
                if res in attn_resolutions:
                    blocks.append(AttnBlock(cur, heads, norm_groups))
                self.up.append(nn.ModuleList(blocks))
            if level != 0:
                self.up.append(nn.ModuleList([Upsample(cur)]))
                res *= 2

        self.out = nn.Sequential(_norm(cur, norm_groups), nn.SiLU(), nn.Conv2d(cur, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def _run(blocks, h, emb, cond):
        for b in blocks:
            h = b(h, emb, cond) if isinstance(b, ResBlock) else b(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.cond_dim and cond is None:
            raise ValueError(f"this UNet expects a conditioning vector of size {self.cond_dim}")
        emb = self.time_embed(t)
        h = self.conv_in(x)
        hs = [h]
        for blocks in self.down:
            h = self._run(blocks, h, emb, cond)
            hs.append(h)
        h = self._run(self.mid, h, emb, cond)
        for blocks in self.up:
            if isinstance(blocks[0], Upsample):
                h = blocks[0](h)
            else:
                h = self._run(blocks, torch.cat([h, hs.pop()], dim=1), emb, cond)
        return self.out(h)
