"""DDGAN's time-dependent image discriminators (Xiao et al. 2022; NVlabs/denoising-diffusion-gan
``Discriminator_small`` for 32-pixel images, ``Discriminator_large`` for 256), with SIDDM's heads.

Encoder (as the reference): the inputs through a 1×1 convolution to 2·ngf channels, then residual conv
blocks (LeakyReLU 0.2, 3×3 conv, + a projection of the time embedding, LeakyReLU, FIR ÷2 down-sampling of
both paths where the block down-samples, 3×3 conv, a bias-free 1×1 skip, sum / sqrt 2):
  small: 2ngf -> 2ngf, -> 4ngf ÷2, -> 8ngf ÷2, -> 8ngf ÷2            (32 px -> 4 px)
  large: 2ngf -> 4ngf ÷2, -> 8ngf ÷2, then four 8ngf ÷2 blocks       (256 px -> 4 px)
then a minibatch-standard-deviation feature (groups of min(B, 4) samples), a 3×3 convolution, LeakyReLU,
a sum over pixels and a Linear to one logit. The time step t (integer) is embedded by sinusoids of
``t_emb_dim`` features and a two-layer LeakyReLU MLP, followed by LeakyReLU.

``joint=True`` is DDGAN's D(x_{t-1}, t, x_t): x_{t-1} and x_t concatenated on channels (the reference's
``nc = 2·num_channels``). ``joint=False`` is the marginal D(x_{t-1}, t) of SIDDM (x_t is not an input).

SIDDM's heads (``cond_head``: C_ψ(x_{t-1}, t) ≈ E[x_t | x_{t-1}], the AFD entropy estimator; ``aux_head``:
the discriminator regulariser's reconstruction of x0 from x_{t-1}) make the discriminator a UNet, as the
SIDDM paper describes it, sharing the encoder with the logit. The decoder mirrors the encoder: one up
block per encoder block, deepest first; up block i takes the decoder's features (FIR ×2 up-sampled where
encoder block i down-sampled), concatenates encoder block i's input features (the skip connection) and
applies the encoder's residual conv block (with the time embedding, no resampling) back to that input's
channels. It starts from the last encoder block's output (before the minibatch-std feature, so a head's
output for one sample does not depend on the rest of the batch) and ends at full resolution with 2·ngf
channels. Each requested head is then LeakyReLU and its own 3×3 convolution to the image channels. The
two heads share the decoder; with neither head the decoder is not built, so every parameter takes part in
the losses of the objective that asked for the heads (plain DDP).

Reference weights load with ``siddm_lab.nets.ncsnpp.from_ddgan_state_dict``. Where the reference's
minibatch-std grouping cannot split a batch (B > 4 not a multiple of 4) this uses the largest group size
<= 4 that divides B, instead of failing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from siddm_lab.errors import ConfigError
from siddm_lab.nets.checks import check_bool, check_int
from siddm_lab.nets.discriminator import DiscriminatorOutput, minibatch_stddev
from siddm_lab.nets.embeddings import sinusoidal_embedding
from siddm_lab.nets.fir import conv2d, dense, downsample_2d, fir_kernel_2d, upsample_2d

HEADS = ("logit", "cond", "aux")
FIR_KERNEL = (1, 3, 3, 1)  # the reference's resampling filter


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class ConvBlock(nn.Module):
    """The reference's DownConvBlock: act, 3×3 conv, + time projection, act, [FIR ÷2 of both paths], 3×3 conv
    (near-zero init), plus a bias-free 1×1 skip, divided by sqrt 2."""

    def __init__(self, in_ch: int, out_ch: int, t_emb_dim: int, downsample: bool = False):
        super().__init__()
        self.conv1 = conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = conv2d(out_ch, out_ch, 3, padding=1, scale=0.0)
        self.temb_proj = dense(t_emb_dim, out_ch)
        self.skip = conv2d(in_ch, out_ch, 1, bias=False)
        self.downsample = downsample
        self.register_buffer("fir", fir_kernel_2d(FIR_KERNEL), persistent=False)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_act(x)) + self.temb_proj(temb)[..., None, None]
        h = _act(h)
        if self.downsample:
            h, x = downsample_2d(h, self.fir), downsample_2d(x, self.fir)
        return (self.conv2(h) + self.skip(x)) / math.sqrt(2.0)


class DDGANDiscriminator(nn.Module):
    """D(x_{t-1}, t[, x_t]) with optional SIDDM heads; see the module docstring. Built by
    ``DDGANDiscriminatorSmall`` / ``DDGANDiscriminatorLarge`` (the reference's two layouts).

    Args:
        in_channels: image channels (x_{t-1}; the joint form doubles them).
        image_size: spatial size; divisible by 2 to the number of down-sampling blocks.
        ngf: width (blocks have 2, 4 and 8 times ngf channels).
        t_emb_dim: the time embedding's width.
        joint / cond_head / aux_head: see the module docstring (the model passes them).
    """

    LAYOUT: tuple[tuple[int, int, bool], ...] = ()  # (in mult, out mult, downsample) per block
    FINAL_INIT_SCALE = 1.0
    NAME = ""

    def __init__(self, in_channels: int = 3, image_size: int = 32, ngf: int = 64, t_emb_dim: int = 256,
                 joint: bool = False, cond_head: bool = False, aux_head: bool = False):
        super().__init__()
        for key, v in (("in_channels", in_channels), ("image_size", image_size), ("ngf", ngf)):
            check_int(f"discriminator.{key}", v, 1)
        check_int("discriminator.t_emb_dim", t_emb_dim, 4)  # sinusoids with a frequency step: 2 pairs at least
        for key, v in (("joint", joint), ("cond_head", cond_head), ("aux_head", aux_head)):
            check_bool(f"discriminator.{key}", v)
        factor = 2 ** sum(down for *_, down in self.LAYOUT)
        if image_size % factor:
            raise ConfigError(
                f"discriminator.image_size={image_size} is not divisible by {factor}: DDGAN's {self.NAME} "
                f"discriminator halves the image {int(math.log2(factor))} times (discriminator.image_size follows "
                f"dataset.image_size); allowed: a multiple of {factor}")
        self.joint, self.t_emb_dim = joint, t_emb_dim
        self.time_embed = nn.Sequential(dense(t_emb_dim, t_emb_dim), nn.LeakyReLU(0.2), dense(t_emb_dim, t_emb_dim))
        self.start_conv = conv2d(in_channels * (2 if joint else 1), 2 * ngf, 1)
        self.blocks = nn.ModuleList(ConvBlock(ngf * a, ngf * b, t_emb_dim, down)
                                    for a, b, down in self.LAYOUT)
        last = ngf * self.LAYOUT[-1][1]
        self.final_conv = conv2d(last + 1, last, 3, padding=1, scale=self.FINAL_INIT_SCALE)
        self.end_linear = dense(last, 1)

        self.decoder = None
        if cond_head or aux_head:
            self.register_buffer("fir_up", fir_kernel_2d(FIR_KERNEL, gain=4.0), persistent=False)
            self.decoder = nn.ModuleList(ConvBlock(ngf * (a + b), ngf * a, t_emb_dim)
                                         for a, b, _ in reversed(self.LAYOUT))
        self.cond = conv2d(2 * ngf, in_channels, 3, padding=1) if cond_head else None
        self.aux = conv2d(2 * ngf, in_channels, 3, padding=1) if aux_head else None

    def forward(self, x_prev: torch.Tensor, t: torch.Tensor, x_t: torch.Tensor | None = None,
                heads: tuple[str, ...] = ("logit",)) -> DiscriminatorOutput:
        unknown = [h for h in heads if h not in HEADS]
        if unknown:
            raise ValueError(f"unknown discriminator heads {unknown}; allowed: {', '.join(HEADS)}")
        if self.joint:
            if x_t is None:
                raise ValueError("a joint (DDGAN) discriminator needs x_t")
            x_prev = torch.cat([x_prev, x_t], dim=1)
        temb = _act(self.time_embed(sinusoidal_embedding(t, self.t_emb_dim, downscale_freq_shift=1.0)))
        feats = [self.start_conv(x_prev)]
        for block in self.blocks:
            feats.append(block(feats[-1], temb))
        out = DiscriminatorOutput(logit=None)
        if "logit" in heads:
            h = _act(self.final_conv(minibatch_stddev(feats[-1], 4)))
            out.logit = self.end_linear(h.sum(dim=(2, 3))).squeeze(-1)
        wanted = [h for h in ("cond", "aux") if h in heads]
        for name in wanted:
            if getattr(self, name) is None:
                raise ValueError(f"this discriminator has no '{name}' head ({name}_head=False)")
        if wanted:
            u = self._decode(feats, temb)
            for name in wanted:
                setattr(out, name, getattr(self, name)(_act(u)))
        return out

    def _decode(self, feats: list[torch.Tensor], temb: torch.Tensor) -> torch.Tensor:
        u = feats[-1]
        for i, block in zip(reversed(range(len(self.blocks))), self.decoder):
            if self.blocks[i].downsample:
                u = upsample_2d(u, self.fir_up)
            u = block(torch.cat([u, feats[i]], dim=1), temb)
        return u

    def ddgan_key_map(self) -> dict[str, tuple[str, bool]]:
        """reference key -> (our key, False): the encoder and logit; the heads have no reference."""
        mapping = {f"t_embed.main.{i}.{p}": (f"time_embed.{i}.{p}", False) for i in (0, 2) for p in ("weight", "bias")}
        for p in ("weight", "bias"):
            mapping[f"start_conv.{p}"] = (f"start_conv.{p}", False)
            mapping[f"final_conv.{p}"] = (f"final_conv.{p}", False)
            mapping[f"end_linear.{p}"] = (f"end_linear.{p}", False)
        for i in range(len(self.blocks)):
            ref, own = f"conv{i + 1}", f"blocks.{i}"
            for p in ("weight", "bias"):
                mapping[f"{ref}.conv1.0.{p}"] = (f"{own}.conv1.{p}", False)
                mapping[f"{ref}.conv2.0.{p}"] = (f"{own}.conv2.{p}", False)
                mapping[f"{ref}.dense_t1.{p}"] = (f"{own}.temb_proj.{p}", False)
            mapping[f"{ref}.skip.0.weight"] = (f"{own}.skip.weight", False)
        return mapping


class DDGANDiscriminatorSmall(DDGANDiscriminator):
    """``Discriminator_small`` (CIFAR-10, StackMNIST): defaults are DDGAN's CIFAR-10 recipe (ngf 64,
    t_emb_dim 256; 12,741,633 parameters joint on RGB)."""

    LAYOUT = ((2, 2, False), (2, 4, True), (4, 8, True), (8, 8, True))
    FINAL_INIT_SCALE = 0.0
    NAME = "small"


class DDGANDiscriminatorLarge(DDGANDiscriminator):
    """``Discriminator_large`` (CelebA-HQ, LSUN at 256): defaults are DDGAN's CelebA-HQ-256 recipe (ngf 64,
    t_emb_dim 256; 27,737,217 parameters joint on RGB)."""

    LAYOUT = ((2, 4, True), (4, 8, True), (8, 8, True), (8, 8, True), (8, 8, True), (8, 8, True))
    NAME = "large"

    def __init__(self, in_channels: int = 3, image_size: int = 256, ngf: int = 64, t_emb_dim: int = 256,
                 joint: bool = False, cond_head: bool = False, aux_head: bool = False):
        super().__init__(in_channels, image_size, ngf, t_emb_dim, joint, cond_head, aux_head)
