"""DDGAN's generator: NCSN++ (Song et al. 2021) with the latent z injected by adaptive group norm (Xiao et al.
2022, "Tackling the generative learning trilemma with denoising diffusion GANs").

G(x_t, t, z) -> x0'. The latent z goes through a mapping network (pixel norm, then ``n_mlp + 1`` SiLU
layers to ``z_emb_dim``); every residual block normalises with AdaGN, γ(z)·GroupNorm(h) + β(z). The time
step t (an integer in [0, T)) is embedded by sinusoids (``num_channels_dae`` features) and a two-layer
SiLU MLP to 4·``num_channels_dae``, added after each block's first convolution.

The hyper-parameters carry DDGAN's command-line names (``num_channels_dae``, ``ch_mult``, ``n_mlp``,
``z_emb_dim``, ``resblock_type``, ``progressive_input``, ...) so that its recipes transcribe one to one;
``cond_dim`` is DDGAN's ``nz`` (siddm_lab's generator interface names the latent size so). The signature
defaults are DDGAN's CIFAR-10 recipe (48,432,515 parameters):

    --num_channels_dae 128 --ch_mult 1 2 2 2 --num_res_blocks 2 --nz 100 --z_emb_dim 256 --n_mlp 4
    and the defaults of train_ddgan.py: attention at 16, dropout 0, BigGAN residual blocks with FIR
    [1, 3, 3, 1] resampling, skip rescale, progressive_input "residual" (a FIR-down-sampling convolution of
    the input pyramid added to each level's down-sampled features), progressive "none", tanh output,
    centered inputs (data in [-1, 1]).

Layout (channels C_l = num_channels_dae·ch_mult[l], resolution image_size / 2^l):
    conv_in; down[l]: num_res_blocks blocks (each followed by attention where the resolution is in
    attn_resolutions), then (l < L−1) a down-sampling block and the input-pyramid merge; mid: block,
    attention, block; up[j] (j = 0 is the lowest resolution): num_res_blocks + 1 blocks on the features
    concatenated with the stored down-path features, attention after the last block, the output-pyramid
    step, an up-sampling block; GroupNorm, SiLU, conv_out; tanh.

Weights of the reference implementation (NVlabs/denoising-diffusion-gan, ``NCSNpp``) load through
``from_ddgan_state_dict``: its modules sit in one flat list (``all_modules.<i>``) in build order, which this
module records (``ddgan_module_order``) while it builds the same modules with readable names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from siddm_lab.errors import CheckpointError, ConfigError
from siddm_lab.nets.checks import check_bool, check_choice, check_int, check_int_list, check_number
from siddm_lab.nets.embeddings import sinusoidal_embedding
from siddm_lab.nets.fir import FIRDownConv, default_init_, dense, downsample_2d, fir_kernel_2d, upsample_2d

RESBLOCK_TYPES = ("biggan", "biggan_oneadagn", "ddpm")
PROGRESSIVE = ("none", "output_skip")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
PROGRESSIVE_COMBINE = ("sum", "cat")


def _conv(in_ch: int, out_ch: int, kernel_size: int = 3, scale: float = 1.0, stride: int = 1,
          padding: int | None = None) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride,
                     padding=kernel_size // 2 if padding is None else padding)
    default_init_(conv.weight, scale)
    nn.init.zeros_(conv.bias)
    return conv


def _linear(in_features: int, out_features: int) -> nn.Linear:
    lin = nn.Linear(in_features, out_features)
    default_init_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


def _rescale(a: torch.Tensor, b: torch.Tensor, skip_rescale: bool) -> torch.Tensor:
    return (a + b) / math.sqrt(2.0) if skip_rescale else a + b


class PixelNorm(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z / torch.sqrt(torch.mean(z ** 2, dim=1, keepdim=True) + 1e-8)


class AdaptiveGroupNorm(nn.Module):
    """γ(z)·GroupNorm(h) + β(z), γ and β from one Linear of the z embedding (γ's bias starts at 1)."""

    def __init__(self, groups: int, ch: int, z_emb_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6, affine=False)
        self.style = dense(z_emb_dim, 2 * ch)
        with torch.no_grad():
            self.style.bias[:ch] = 1.0

    def forward(self, h: torch.Tensor, zemb: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.style(zemb)[:, :, None, None].chunk(2, dim=1)
        return gamma * self.norm(h) + beta


class _Resample(nn.Module):
    """Parameter-free ×2 up- or down-sampling: FIR, or nearest neighbour / 2×2 mean without FIR."""

    def __init__(self, up: bool, fir: bool, fir_kernel: Sequence[float]):
        super().__init__()
        self.up, self.fir = up, fir
        self.register_buffer("kernel", fir_kernel_2d(fir_kernel, gain=4.0 if up else 1.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fir:
            return upsample_2d(x, self.kernel) if self.up else downsample_2d(x, self.kernel)
        return F.interpolate(x, scale_factor=2, mode="nearest") if self.up else F.avg_pool2d(x, 2)


class ResBlock(nn.Module):
    """A residual block with AdaGN and the time embedding, optionally up- or down-sampling (BigGAN style:
    both paths resampled, a 1×1 skip convolution). ``kind``: ``biggan``; ``biggan_oneadagn`` (the second
    norm a plain GroupNorm); ``ddpm`` (no resampling; its 1×1 skip is NCSN++'s "NIN", init scale 0.1)."""

    DDGAN_NAMES = {"norm1": "GroupNorm_0", "conv1": "Conv_0", "temb_proj": "Dense_0", "norm2": "GroupNorm_1",
                   "conv2": "Conv_1"}

    def __init__(self, in_ch: int, out_ch: int | None, temb_dim: int, z_emb_dim: int, groups: Callable[[int], int],
                 kind: str = "biggan", up: bool = False, down: bool = False, dropout: float = 0.0, fir: bool = True,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1), skip_rescale: bool = True):
        super().__init__()
        out_ch = out_ch or in_ch
        self.norm1 = AdaptiveGroupNorm(groups(in_ch), in_ch, z_emb_dim)
        self.resample = _Resample(up, fir, fir_kernel) if up or down else None
        self.conv1 = _conv(in_ch, out_ch)
        self.temb_proj = _linear(temb_dim, out_ch)
        self.norm2 = (nn.GroupNorm(groups(out_ch), out_ch, eps=1e-6) if kind == "biggan_oneadagn"
                      else AdaptiveGroupNorm(groups(out_ch), out_ch, z_emb_dim))
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(out_ch, out_ch, scale=0.0)
        self.skip = None
        if in_ch != out_ch or up or down:
            self.skip = _conv(in_ch, out_ch, 1, scale=0.1 if kind == "ddpm" else 1.0)
        self.nin = kind == "ddpm"  # the reference holds this skip as a NIN matrix ([in, out])
        self.skip_rescale = skip_rescale

    @property
    def ddgan_names(self) -> dict[str, str]:
        return {**self.DDGAN_NAMES, "skip": "NIN_0" if self.nin else "Conv_2"}

    @property
    def ddgan_nin(self) -> set[str]:
        return {"skip"} if self.nin else set()

    def forward(self, x: torch.Tensor, temb: torch.Tensor, zemb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(x, zemb))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = self.conv1(h) + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = F.silu(self.norm2(h, zemb) if isinstance(self.norm2, AdaptiveGroupNorm) else self.norm2(h))
        h = self.conv2(self.dropout(h))
        if self.skip is not None:
            x = self.skip(x)
        return _rescale(x, h, self.skip_rescale)


class AttnBlock(nn.Module):
    """Self-attention over pixels, one head of C channels; q, k, v and the output are 1×1 convolutions
    (the reference's "NIN" matrices)."""

    DDGAN_NAMES = {"norm": "GroupNorm_0", "q": "NIN_0", "k": "NIN_1", "v": "NIN_2", "proj": "NIN_3"}
    ddgan_nin = {"q", "k", "v", "proj"}

    def __init__(self, ch: int, groups: Callable[[int], int], skip_rescale: bool = True):
        super().__init__()
        self.norm = nn.GroupNorm(groups(ch), ch, eps=1e-6)
        self.q, self.k, self.v = (_conv(ch, ch, 1, scale=0.1) for _ in range(3))
        self.proj = _conv(ch, ch, 1, scale=0.0)
        self.skip_rescale = skip_rescale

    @property
    def ddgan_names(self) -> dict[str, str]:
        return self.DDGAN_NAMES

    def forward(self, x: torch.Tensor, *_) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (m(h).reshape(B, 1, C, H * W).transpose(-1, -2) for m in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(B, C, H, W)
        return _rescale(x, self.proj(h), self.skip_rescale)


class Downsample(nn.Module):
    """÷2 down-sampling for the ``ddpm`` blocks and the input pyramid: with a convolution (fused with the FIR
    filter, or a stride-2 3×3 after padding right and bottom) or without (FIR, or a 2×2 mean)."""

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv: bool = True, fir: bool = True,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        self.fir, self.with_conv = fir, with_conv
        self.conv = None
        if with_conv:
            self.conv = FIRDownConv(in_ch, out_ch, fir_kernel) if fir else _conv(in_ch, out_ch, stride=2, padding=0)
        self.resample = _Resample(False, fir, fir_kernel)

    @property
    def ddgan_names(self) -> dict[str, str]:
        return {"conv": "Conv2d_0" if self.fir else "Conv_0"}

    def forward(self, x: torch.Tensor, *_) -> torch.Tensor:
        if self.conv is None:
            return self.resample(x)
        return self.conv(x) if self.fir else self.conv(F.pad(x, (0, 1, 0, 1)))


class Combine(nn.Module):
    """The input pyramid (``input_skip``): a 1×1 convolution of the down-sampled image, summed with or
    concatenated before the features."""

    DDGAN_NAMES = {"conv": "Conv_0"}

    def __init__(self, in_ch: int, out_ch: int, method: str):
        super().__init__()
        self.conv = _conv(in_ch, out_ch, 1)
        self.method = method

    @property
    def ddgan_names(self) -> dict[str, str]:
        return self.DDGAN_NAMES

    def forward(self, pyramid: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        p = self.conv(pyramid)
        return torch.cat([p, h], dim=1) if self.method == "cat" else p + h


class DownLevel(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attns = nn.ModuleList()  # one per block where the level has attention, else empty
        self.downsample: nn.Module | None = None
        self.pyramid: nn.Module | None = None  # Combine (input_skip) or Downsample (residual)


class UpLevel(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attn: nn.Module | None = None
        self.pyramid_norm: nn.Module | None = None  # output pyramid: GroupNorm + 3x3 conv to the image
        self.pyramid_conv: nn.Module | None = None
        self.upsample: nn.Module | None = None


def _check_size(image_size: int, ch_mult: list[int]) -> None:
    factor = 2 ** (len(ch_mult) - 1)
    if image_size % factor:
        halvings = (image_size & -image_size).bit_length() - 1
        raise ConfigError(
            f"net.image_size={image_size} is not divisible by 2**(len(net.ch_mult)-1)={factor}: NCSN++ halves the "
            f"image {len(ch_mult) - 1} times (net.image_size follows dataset.image_size); allowed: an image size "
            f"that is a multiple of {factor}, or a net.ch_mult with at most {halvings + 1} entries for this size")


_BROKEN_UP = ("layers that do not run in its PyTorch code (a FIR transposed convolution built with a negative-step "
              "slice; F.interpolate given both a size and a scale factor)")


def _check_reference_runs(progressive: str, resblock_type: str, fir: bool, resamp_with_conv: bool) -> None:
    """The reference's separate up-sampling layer runs only as a FIR filter without convolution; refuse the
    configurations that would need it otherwise (they have no reference behaviour to match)."""
    if not fir and progressive == "output_skip":
        what = "net.progressive='output_skip'"
    elif not fir and resblock_type == "ddpm":
        what = "net.resblock_type='ddpm'"
    elif resblock_type == "ddpm" and resamp_with_conv:
        what = "net.resblock_type='ddpm' with net.resamp_with_conv=true"
    else:
        return
    raise ConfigError(
        f"{what} with net.fir={str(fir).lower()} up-samples with {_BROKEN_UP} in the reference, so there is no "
        f"reference behaviour to match; allowed: net.fir=true (and net.resamp_with_conv=false for ddpm blocks), "
        f"or net.resblock_type biggan / biggan_oneadagn with net.progressive='none'")


def _check_fir_kernel(v) -> list[float]:
    ok = (not isinstance(v, (str, bytes)) and isinstance(v, Sequence) and len(v) >= 2
          and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in v) and sum(v) > 0)
    if not ok:
        raise ConfigError(f"net.fir_kernel={v!r} is invalid: expected a list of at least 2 non-negative numbers "
                          f"with a positive sum (the separable FIR filter, e.g. [1, 3, 3, 1])")
    return [float(x) for x in v]


class NCSNpp(nn.Module):
    """f(x_t, t, cond=z) -> x0' (same shape as x_t); see the module docstring.

    Args:
        in_channels: image channels (DDGAN's ``num_channels``).
        image_size: spatial size; divisible by 2**(len(ch_mult)-1).
        num_channels_dae: base channels; ``ch_mult`` multiplies them per resolution.
        num_res_blocks: residual blocks per resolution (one more on the way up).
        attn_resolutions: resolutions (pixels) with self-attention.
        dropout: in the residual blocks.
        cond_dim: size of z (DDGAN's ``nz``).  z_emb_dim / n_mlp: the z mapping network's width and
            extra layers (n_mlp + 1 Linear+SiLU layers after pixel norm).
        resblock_type: ``biggan`` (resampling residual blocks), ``biggan_oneadagn``, ``ddpm`` (separate
            up/down-sampling layers).
        progressive: output pyramid ``none`` | ``output_skip`` (a GroupNorm+conv image at every level,
            up-sampled and summed).
        progressive_input: input pyramid ``none`` | ``input_skip`` (the down-sampled image, 1×1 conv, summed or
            concatenated) | ``residual`` (a down-sampling conv of the pyramid, summed with the features).
        progressive_combine: ``sum`` | ``cat`` (how ``input_skip`` merges).
        fir / fir_kernel: FIR resampling and its separable kernel (else nearest / mean).
        resamp_with_conv: a convolution in the ``ddpm`` blocks' down-sampling layer.
        skip_rescale: divide residual sums by sqrt(2).
        not_use_tanh: return the last convolution's output (else tanh of it).
        centered: inputs already in [-1, 1] (else x is mapped by 2x − 1 first).

    GroupNorms use min(C // 4, 32) groups over C channels, as NCSN++.

    Of the reference's options, those whose up-sampling does not run in its code are refused with a
    ConfigError: progressive ``residual``; ``output_skip`` or ``ddpm`` blocks without FIR; ``ddpm`` blocks
    with ``resamp_with_conv`` (its up-sampling layer runs only as a FIR filter without convolution).
    The time embedding is positional (DDGAN's ``embedding_type``; its Fourier option takes log σ, not
    integer steps).
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        num_channels_dae: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        cond_dim: int = 100,
        z_emb_dim: int = 256,
        n_mlp: int = 4,
        resblock_type: str = "biggan",
        progressive: str = "none",
        progressive_input: str = "residual",
        progressive_combine: str = "sum",
        fir: bool = True,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
        resamp_with_conv: bool = True,
        skip_rescale: bool = True,
        not_use_tanh: bool = False,
        centered: bool = True,
    ):
        super().__init__()
        for key, v in (("in_channels", in_channels), ("image_size", image_size), ("num_channels_dae", num_channels_dae),
                       ("cond_dim", cond_dim), ("z_emb_dim", z_emb_dim)):
            check_int(f"net.{key}", v, 1)
        check_int("net.num_res_blocks", num_res_blocks, 0)
        check_int("net.n_mlp", n_mlp, 0)
        ch_mult = check_int_list("net.ch_mult", ch_mult, 1, non_empty=True)
        attn_resolutions = check_int_list("net.attn_resolutions", attn_resolutions or [], 1)
        check_number("net.dropout", dropout, lambda v: 0 <= v < 1, "a number in [0, 1)")
        resblock_type = check_choice("net.resblock_type", resblock_type, RESBLOCK_TYPES)
        if progressive == "residual":
            raise ConfigError(
                "net.progressive='residual' is invalid: the reference's residual output pyramid up-samples with "
                f"{_BROKEN_UP}, so there is no reference behaviour to match; allowed: 'none' (DDGAN's recipes) "
                "or 'output_skip'")
        progressive = check_choice("net.progressive", progressive, PROGRESSIVE)
        progressive_input = check_choice("net.progressive_input", progressive_input, PROGRESSIVE_INPUT)
        progressive_combine = check_choice("net.progressive_combine", progressive_combine, PROGRESSIVE_COMBINE)
        for key, v in (("fir", fir), ("resamp_with_conv", resamp_with_conv), ("skip_rescale", skip_rescale),
                       ("not_use_tanh", not_use_tanh), ("centered", centered)):
            check_bool(f"net.{key}", v)
        fir_kernel = _check_fir_kernel(fir_kernel)
        _check_size(image_size, ch_mult)
        _check_reference_runs(progressive, resblock_type, fir, resamp_with_conv)

        def groups(c: int) -> int:
            g = min(c // 4, 32)
            if g < 1 or c % g:
                raise ConfigError(
                    f"net.num_channels_dae={num_channels_dae} with net.ch_mult={ch_mult} gives a block of {c} "
                    f"channels, which GroupNorm's min(C // 4, 32) = {g} groups do not divide; allowed: "
                    f"net.num_channels_dae a multiple of 32 (then every block's channels are)")
            return g

        nf = num_channels_dae
        self.cond_dim = cond_dim
        self.nf = nf
        self.not_use_tanh, self.centered = not_use_tanh, centered
        self.progressive, self.progressive_input, self.skip_rescale = progressive, progressive_input, skip_rescale
        temb_dim = 4 * nf
        order: list[str] = []  # the reference's flat module list, by our names

        def block(in_ch, out_ch=None, **kw):
            return ResBlock(in_ch, out_ch, temb_dim, z_emb_dim, groups, kind=resblock_type, dropout=dropout, fir=fir,
                            fir_kernel=fir_kernel, skip_rescale=skip_rescale, **kw)

        def attn(ch):
            return AttnBlock(ch, groups, skip_rescale)

        self.time_embed = nn.Sequential(_linear(nf, temb_dim), nn.SiLU(), _linear(temb_dim, temb_dim))
        order += ["time_embed.0", "time_embed.2"]
        self.conv_in = _conv(in_channels, nf)
        order.append("conv_in")
        self._pyramid_down = _Resample(False, fir, fir_kernel)  # input_skip: the image pyramid, no parameters
        self._pyramid_up = _Resample(True, fir, fir_kernel)  # output_skip

        levels = len(ch_mult)
        pyramid_ch = in_channels
        hs_c = [nf]
        in_ch = nf
        self.down = nn.ModuleList()
        for lvl in range(levels):
            level = DownLevel()
            self.down.append(level)
            res = image_size // 2 ** lvl
            for i in range(num_res_blocks):
                level.blocks.append(block(in_ch, nf * ch_mult[lvl]))
                in_ch = nf * ch_mult[lvl]
                order.append(f"down.{lvl}.blocks.{i}")
                if res in attn_resolutions:
                    level.attns.append(attn(in_ch))
                    order.append(f"down.{lvl}.attns.{i}")
                hs_c.append(in_ch)
            if lvl == levels - 1:
                continue
            level.downsample = (Downsample(in_ch, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
                                if resblock_type == "ddpm" else block(in_ch, down=True))
            order.append(f"down.{lvl}.downsample")
            if progressive_input == "input_skip":
                level.pyramid = Combine(pyramid_ch, in_ch, progressive_combine)
                order.append(f"down.{lvl}.pyramid")
                if progressive_combine == "cat":
                    in_ch *= 2
            elif progressive_input == "residual":
                level.pyramid = Downsample(pyramid_ch, in_ch, with_conv=True, fir=fir, fir_kernel=fir_kernel)
                order.append(f"down.{lvl}.pyramid")
                pyramid_ch = in_ch
            hs_c.append(in_ch)

        in_ch = hs_c[-1]
        self.mid = nn.ModuleList([block(in_ch), attn(in_ch), block(in_ch)])
        order += ["mid.0", "mid.1", "mid.2"]

        self.up = nn.ModuleList()
        for j, lvl in enumerate(reversed(range(levels))):
            level = UpLevel()
            self.up.append(level)
            for i in range(num_res_blocks + 1):
                level.blocks.append(block(in_ch + hs_c.pop(), nf * ch_mult[lvl]))
                in_ch = nf * ch_mult[lvl]
                order.append(f"up.{j}.blocks.{i}")
            if image_size // 2 ** lvl in attn_resolutions:
                level.attn = attn(in_ch)
                order.append(f"up.{j}.attn")
            if progressive == "output_skip":
                level.pyramid_norm = nn.GroupNorm(groups(in_ch), in_ch, eps=1e-6)
                level.pyramid_conv = _conv(in_ch, in_channels, scale=0.0)
                order += [f"up.{j}.pyramid_norm", f"up.{j}.pyramid_conv"]
            if lvl != 0:
                # ddpm: FIR up-sampling without parameters (it still holds a place in the reference's list)
                level.upsample = _Resample(True, fir, fir_kernel) if resblock_type == "ddpm" else block(in_ch, up=True)
                order.append(f"up.{j}.upsample")
        assert not hs_c

        self.norm_out = self.conv_out = None
        if progressive != "output_skip":
            self.norm_out = nn.GroupNorm(groups(in_ch), in_ch, eps=1e-6)
            self.conv_out = _conv(in_ch, in_channels, scale=0.0)
            order += ["norm_out", "conv_out"]
        self.ddgan_module_order = order

        mapping: list[nn.Module] = [PixelNorm(), dense(cond_dim, z_emb_dim), nn.SiLU()]
        for _ in range(n_mlp):
            mapping += [dense(z_emb_dim, z_emb_dim), nn.SiLU()]
        self.z_transform = nn.Sequential(*mapping)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None:
            raise ValueError(f"NCSNpp expects a latent z of size {self.cond_dim} (cond=...)")
        zemb = self.z_transform(cond)
        temb = self.time_embed(sinusoidal_embedding(t, self.nf, downscale_freq_shift=1.0))
        if not self.centered:
            x = 2 * x - 1.0
        input_pyramid = x
        hs = [self.conv_in(x)]
        for level in self.down:
            for i, blk in enumerate(level.blocks):
                h = blk(hs[-1], temb, zemb)
                if len(level.attns):
                    h = level.attns[i](h)
                hs.append(h)
            if level.downsample is None:
                continue
            h = level.downsample(hs[-1], temb, zemb)
            if self.progressive_input == "input_skip":
                input_pyramid = self._pyramid_down(input_pyramid)
                h = level.pyramid(input_pyramid, h)
            elif self.progressive_input == "residual":
                input_pyramid = _rescale(level.pyramid(input_pyramid), h, self.skip_rescale)
                h = input_pyramid
            hs.append(h)

        h = self.mid[0](hs[-1], temb, zemb)
        h = self.mid[1](h)
        h = self.mid[2](h, temb, zemb)

        pyramid = None
        for j, level in enumerate(self.up):
            for blk in level.blocks:
                h = blk(torch.cat([h, hs.pop()], dim=1), temb, zemb)
            if level.attn is not None:
                h = level.attn(h)
            if level.pyramid_conv is not None:
                p = level.pyramid_conv(F.silu(level.pyramid_norm(h)))
                pyramid = p if j == 0 else self._pyramid_up(pyramid) + p
            if isinstance(level.upsample, ResBlock):
                h = level.upsample(h, temb, zemb)
            elif level.upsample is not None:
                h = level.upsample(h)

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = self.conv_out(F.silu(self.norm_out(h)))
        return h if self.not_use_tanh else torch.tanh(h)

    def ddgan_key_map(self) -> dict[str, tuple[str, bool]]:
        """reference key -> (our key, whether the tensor is a NIN matrix to transpose into a 1x1 conv)."""
        mapping = {}
        for i, prefix in enumerate(self.ddgan_module_order):
            module = self.get_submodule(prefix)
            names = getattr(module, "ddgan_names", {})
            nin = getattr(module, "ddgan_nin", set())
            for key in module.state_dict():
                child, _, rest = key.partition(".")
                if child in nin:
                    ref = f"{names[child]}.{'W' if rest == 'weight' else 'b'}"
                else:
                    ref = f"{names.get(child, child)}.{rest}" if rest else key
                mapping[f"all_modules.{i}.{ref}"] = (f"{prefix}.{key}", child in nin)
        for key in self.z_transform.state_dict():
            mapping[f"z_transform.{key}"] = (f"z_transform.{key}", False)
        return mapping


def _from_nin(w: torch.Tensor) -> torch.Tensor:
    """NIN matrix [in, out] -> 1x1 conv weight [out, in, 1, 1]; a NIN bias is already [out]."""
    return w.t()[:, :, None, None] if w.dim() == 2 else w


def from_ddgan_state_dict(state_dict: dict[str, torch.Tensor], net: nn.Module,
                          strict: bool = True) -> dict[str, torch.Tensor]:
    """A state dict of the reference DDGAN code (``NCSNpp``, ``Discriminator_small`` or ``Discriminator_large``,
    as saved by train_ddgan.py; a DDP ``module.`` prefix is dropped) renamed for ``net`` (an ``NCSNpp`` or a
    ``DDGANDiscriminator`` of the same configuration), ready for ``net.load_state_dict``.

    Every reference key must map to one of ``net``'s and have its shape; with ``strict`` every parameter of
    ``net`` must be covered (``strict=False`` leaves out what the reference has no counterpart for, e.g. a
    discriminator's SIDDM heads). Raises CheckpointError naming the keys otherwise.
    """
    from siddm_lab.nets.ddgan_discriminator import DDGANDiscriminator

    if not isinstance(net, (NCSNpp, DDGANDiscriminator)):
        raise TypeError(f"from_ddgan_state_dict maps onto an NCSNpp or a DDGANDiscriminator, not {type(net).__name__}")
    mapping = net.ddgan_key_map()
    own = net.state_dict()
    out, unknown, wrong = {}, [], []
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key not in mapping:
            unknown.append(key)
            continue
        name, nin = mapping[key]
        value = _from_nin(value) if nin else value
        if value.shape != own[name].shape:
            wrong.append(f"{key} {tuple(value.shape)} -> {name} {tuple(own[name].shape)}")
            continue
        out[name] = value
    missing = [k for k in own if k not in out] if strict else []
    if unknown or wrong or missing:
        parts = []
        if unknown:
            parts.append(f"keys the {type(net).__name__} has no place for: {', '.join(unknown[:8])}"
                         + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else ""))
        if wrong:
            parts.append(f"shapes that differ: {'; '.join(wrong[:8])}")
        if missing:
            parts.append(f"parameters the state dict lacks: {', '.join(missing[:8])}"
                         + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
        raise CheckpointError("the DDGAN state dict does not fit this net's configuration: " + "; ".join(parts))
    return out


def to_ddgan_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """The inverse of ``from_ddgan_state_dict``: ``net``'s weights under the reference code's keys (heads the
    reference lacks are left out)."""
    own = net.state_dict()
    out = {}
    for ref, (name, nin) in net.ddgan_key_map().items():
        w = own[name]
        out[ref] = (w.reshape(w.shape[0], w.shape[1]).t() if nin and w.dim() == 4 else w).clone()
    return out
