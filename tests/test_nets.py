"""Networks: shapes, conditioning, time dependence, argument errors."""

from __future__ import annotations

import math

import pytest
import torch

from siddm_lab.nets import TimeMLP, UNet
from siddm_lab.nets.embeddings import sinusoidal_embedding


def test_sinusoidal_embedding_values():
    t = torch.tensor([0.0, 1.0, 10.0])
    e = sinusoidal_embedding(t, 8)
    assert e.shape == (3, 8)
    # first half sin, second half cos of t * 10000^(-i/half)
    for k in range(4):
        f = math.exp(-math.log(10000.0) * k / 4)
        torch.testing.assert_close(e[:, k], torch.sin(t * f))
        torch.testing.assert_close(e[:, 4 + k], torch.cos(t * f))
    assert sinusoidal_embedding(t, 7).shape == (3, 7)


def test_mlp_shapes_and_time_dependence():
    torch.manual_seed(0)
    net = TimeMLP(data_dim=2, hidden=32, num_layers=2)
    x = torch.randn(5, 2)
    y0 = net(x, torch.zeros(5, dtype=torch.long))
    y1 = net(x, torch.full((5,), 500, dtype=torch.long))
    assert y0.shape == (5, 2)
    assert not torch.allclose(y0, y1)  # the output depends on t


def test_mlp_conditioning():
    net = TimeMLP(data_dim=2, hidden=16, num_layers=1, cond_dim=3)
    x, t = torch.randn(4, 2), torch.arange(4)
    a = net(x, t, torch.zeros(4, 3))
    b = net(x, t, torch.ones(4, 3))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="conditioning vector of size 3"):
        net(x, t)
    with pytest.raises(ValueError):
        TimeMLP(data_dim=0)


@pytest.mark.parametrize("size,mult,attn", [(8, (1, 2), (4,)), (32, (1, 2, 2), (8,)), (28, (1, 2, 2), (7,))])
def test_unet_shapes(size, mult, attn):
    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=size, ch=32, channel_mult=mult, num_res_blocks=1, attn_resolutions=attn,
               dropout=0.0)
    x = torch.randn(2, 1, size, size)
    assert net(x, torch.tensor([3, 700])).shape == x.shape


def test_unet_output_layer_starts_at_zero_and_learns():
    net = UNet(in_channels=3, image_size=8, ch=32, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
               dropout=0.0)
    x = torch.randn(2, 3, 8, 8)
    assert torch.count_nonzero(net(x, torch.tensor([1, 2]))) == 0  # zero-initialised last conv
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):
        loss = (net(x, torch.tensor([1, 2])) - 1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.count_nonzero(net(x, torch.tensor([1, 2]))) > 0


def test_unet_adaptive_group_norm_conditioning():
    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=8, ch=32, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
               dropout=0.0, cond_dim=5)
    for p in net.parameters():  # break the zero init so the conditioning path shows
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    assert not torch.allclose(net(x, t, torch.zeros(2, 5)), net(x, t, torch.ones(2, 5)))
    with pytest.raises(ValueError, match="conditioning vector"):
        net(x, t)


def test_unet_rejects_indivisible_size():
    with pytest.raises(ValueError, match="not divisible"):
        UNet(image_size=30, channel_mult=(1, 2, 2, 2))
