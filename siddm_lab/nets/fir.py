"""FIR resampling (StyleGAN2, as NCSN++ and DDGAN use it) and the variance-scaling initialisers of those nets.

``upfirdn2d`` is the one primitive: upsample by zero insertion, pad (negative pads crop), filter with a 2-D
FIR kernel (a true convolution, the kernel flipped) and keep every ``down``-th pixel. The separable kernel
``k`` (default [1, 3, 3, 1]) becomes outer(k, k) / sum, times ``factor**2`` when up-sampling so that a
constant image stays constant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def fir_kernel_2d(k: Sequence[float], gain: float = 1.0) -> torch.Tensor:
    """outer(k, k) normalised to sum ``gain`` (float32, [len(k), len(k)])."""
    k = torch.as_tensor(list(k), dtype=torch.float64)
    k2 = torch.outer(k, k)
    return (k2 / k2.sum() * gain).float()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)):
    """x [B, C, H, W] -> [B, C, (H·up + p0 + p1 − kh) // down + 1, ...] (the same pads on both axes)."""
    B, C, H, W = x.shape
    if up > 1:
        x = F.pad(x.reshape(B, C, H, 1, W, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(B, C, H * up, W * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    kh, kw = kernel.shape
    w = torch.flip(kernel, [0, 1]).to(x.dtype)[None, None].expand(C, 1, kh, kw)
    return F.conv2d(x, w, stride=down, groups=C)


def upsample_2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """×factor up-sampling with a FIR kernel from ``fir_kernel_2d(k, gain=factor**2)``."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """÷factor down-sampling with a FIR kernel from ``fir_kernel_2d(k)``."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


class FIRDownConv(nn.Module):
    """A k×k convolution fused with ÷2 FIR down-sampling (filter with padding, then a stride-2 convolution):
    StyleGAN2's ``conv_downsample_2d``. Parameters ``weight`` [out, in, k, k] and ``bias`` [out]."""

    def __init__(self, in_ch: int, out_ch: int, fir_kernel: Sequence[int], kernel_size: int = 3):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        default_init_(self.weight)
        self.register_buffer("fir", fir_kernel_2d(fir_kernel), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = (self.fir.shape[0] - 2) + (self.weight.shape[-1] - 1)
        x = upfirdn2d(x, self.fir, pad=((p + 1) // 2, p // 2))
        return F.conv2d(x, self.weight, self.bias, stride=2)


# Initialisers. Two variance-scaling rules appear in the DDGAN code: NCSN++'s layers use JAX's "fan_avg"
# (variance scale / mean(fan_in, fan_out)); DDGAN's discriminator and the generator's z mapping use a port
# of kaiming_uniform_ whose "fan_avg" mode falls through to fan_out (variance scale / fan_out). Both draw
# uniformly with that variance; a scale of 0 means 1e-10 (a near-zero, not exactly zero, start).

def _fans(shape: torch.Size) -> tuple[int, int]:
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _uniform_(w: torch.Tensor, variance: float) -> torch.Tensor:
    bound = math.sqrt(3.0 * variance)
    with torch.no_grad():
        return w.uniform_(-bound, bound)


def default_init_(w: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """NCSN++ / DDPM init: uniform with variance scale / ((fan_in + fan_out) / 2)."""
    fan_in, fan_out = _fans(w.shape)
    return _uniform_(w, (scale or 1e-10) / ((fan_in + fan_out) / 2))


def fan_out_init_(w: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """DDGAN discriminator / z-mapping init: uniform with variance scale / fan_out."""
    return _uniform_(w, (scale or 1e-10) / max(1.0, _fans(w.shape)[1]))


def dense(in_features: int, out_features: int, scale: float = 1.0) -> nn.Linear:
    """A Linear with DDGAN's fan_out init and a zero bias."""
    lin = nn.Linear(in_features, out_features)
    fan_out_init_(lin.weight, scale)
    nn.init.zeros_(lin.bias)
    return lin


def conv2d(in_ch: int, out_ch: int, kernel_size: int, padding: int = 0, bias: bool = True, scale: float = 1.0,
           init=fan_out_init_) -> nn.Conv2d:
    """A Conv2d with one of the initialisers above and a zero bias."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, bias=bias)
    init(conv.weight, scale)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv
