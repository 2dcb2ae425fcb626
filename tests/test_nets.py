"""Networks: shapes, conditioning, time dependence, argument errors."""

from __future__ import annotations

import math

import pytest
import torch

from siddm_lab.errors import ConfigError
from siddm_lab.nets import ConvDiscriminator, MLPDiscriminator, SkipMLPGenerator, TimeDiscriminator, TimeMLP, UNet
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


@pytest.mark.parametrize(
    "build,expected",
    [
        (lambda: TimeMLP(hidden="abc"), "net.hidden='abc' is invalid: expected an integer >= 1"),
        (lambda: TimeMLP(hidden=True), "net.hidden=True is invalid: expected an integer >= 1"),
        (lambda: TimeMLP(hidden=32.5), "net.hidden=32.5 is invalid: expected an integer >= 1"),
        (lambda: TimeMLP(num_layers=0), "net.num_layers=0 is invalid: expected an integer >= 1"),
        (lambda: TimeMLP(time_dim=1), "net.time_dim=1 is invalid: expected an integer >= 2"),
        (lambda: TimeMLP(cond_dim=-1), "net.cond_dim=-1 is invalid: expected an integer >= 0"),
        (lambda: TimeMLP(time_scale="x"), "net.time_scale='x' is invalid: expected a positive number"),
        (lambda: SkipMLPGenerator(hidden=0), "net.hidden=0 is invalid: expected an integer >= 1"),
        (lambda: SkipMLPGenerator(time_dim=2), "net.time_dim=2 is invalid: expected an integer >= 4"),
        (lambda: UNet(ch="abc"), "net.ch='abc' is invalid: expected an integer >= 1"),
        (lambda: UNet(channel_mult="12"),
         "net.channel_mult='12' is invalid: expected a non-empty list of integers >= 1"),
        (lambda: UNet(channel_mult=[]), "net.channel_mult=[] is invalid: expected a non-empty list of integers >= 1"),
        (lambda: UNet(channel_mult=[1, 0]), "net.channel_mult=[1, 0] is invalid"),
        (lambda: UNet(num_res_blocks=-1), "net.num_res_blocks=-1 is invalid: expected an integer >= 0"),
        (lambda: UNet(attn_resolutions=16), "net.attn_resolutions=16 is invalid: expected a list of integers >= 1"),
        (lambda: UNet(dropout=1.5), "net.dropout=1.5 is invalid: expected a number in [0, 1)"),
        (lambda: UNet(image_size="32"), "net.image_size='32' is invalid: expected an integer >= 1"),
        (lambda: UNet(in_channels=0), "net.in_channels=0 is invalid: expected an integer >= 1"),
        (lambda: UNet(image_size=30, channel_mult=(1, 2, 2, 2)),
         "net.image_size=30 is not divisible by 2**(len(net.channel_mult)-1)=8"),
        (lambda: UNet(ch=48), "net.ch=48 with net.channel_mult=[1, 2, 2] gives a block of 48 channels"),
        (lambda: UNet(ch=16, channel_mult=(1, 2), attn_resolutions=()),
         "net.ch=16 with net.channel_mult=[1, 2] gives a block of 48 channels"),
        (lambda: UNet(ch=32, heads=3), "net.heads=3 does not divide the channels of the attention blocks (64)"),
        (lambda: UNet(ch=32, heads=3, attn_resolutions=(32,)), "attention blocks (32, 64); allowed: a common divisor"),
        (lambda: TimeDiscriminator(hidden="abc"), "discriminator.hidden='abc' is invalid: expected an integer >= 1"),
        (lambda: TimeDiscriminator(num_layers=-1), "discriminator.num_layers=-1 is invalid: expected an integer >= 0"),
        (lambda: ConvDiscriminator(ch=48), "discriminator.ch=48 with discriminator.channel_mult=[1, 2, 2] gives a "
                                           "block of 48 channels"),
        (lambda: ConvDiscriminator(channel_mult="abc"), "discriminator.channel_mult='abc' is invalid"),
        (lambda: MLPDiscriminator(time_dim=2), "discriminator.time_dim=2 is invalid: expected an integer >= 4"),
        (lambda: MLPDiscriminator(num_logits=0), "discriminator.num_logits=0 is invalid: expected an integer >= 1"),
        (lambda: MLPDiscriminator(cond_head=True), "MLPDiscriminator has only the real/fake head"),
    ],
)
def test_bad_hyper_parameters_are_config_errors_naming_the_key(build, expected):
    """A bad width, depth, multiplier or size is a ConfigError naming the config key, value and what is
    allowed, raised when the net is built (not a TypeError inside torch, or a reshape error at the first
    forward pass)."""
    with pytest.raises(ConfigError) as e:
        build()
    assert expected in str(e.value)


def test_unet_size_error_says_which_depths_fit():
    with pytest.raises(ConfigError, match=r"allowed: .*multiple of 16.*at most 4 entries"):
        UNet(image_size=8, channel_mult=(1, 2, 2, 2, 2), attn_resolutions=())


def test_unet_hyper_parameters_that_work_are_accepted():
    x = torch.randn(2, 1, 8, 8)
    for kw in ({"ch": 8, "channel_mult": (1, 2)}, {"num_res_blocks": 0}, {"heads": 2}, {"attn_resolutions": None}):
        net = UNet(**{"image_size": 8, "ch": 32, "channel_mult": (1, 2), "attn_resolutions": (4,), **kw})
        assert net(x, torch.tensor([1, 2])).shape == x.shape


def test_norm_groups_lets_narrow_nets_build_and_sets_every_group_norm():
    """ch 16 with mult (1, 2, 2) concatenates 48-channel blocks, which 32 groups do not divide; 8 do."""
    with pytest.raises(ConfigError, match="or a smaller net.norm_groups"):
        UNet(ch=16, channel_mult=(1, 2, 2), attn_resolutions=(8,))
    net = UNet(ch=16, channel_mult=(1, 2, 2), attn_resolutions=(8,), norm_groups=8, cond_dim=4)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == min(8, m.num_channels) for m in norms)
    x = torch.randn(2, 1, 32, 32)
    assert net(x, torch.tensor([0, 3]), torch.randn(2, 4)).shape == x.shape
    d = ConvDiscriminator(ch=16, norm_groups=8, aux_head=True)
    assert all(m.num_groups == min(8, m.num_channels) for m in d.modules() if isinstance(m, torch.nn.GroupNorm))
    with pytest.raises(ConfigError, match="net.norm_groups=0 is invalid"):
        UNet(norm_groups=0)


def test_minibatch_stddev_closed_form_and_batch_coupling():
    """The appended channel is the features' std over each group, averaged; it couples a sample's logit
    to the other members of its group (and only them), and a batch of copies has zero std."""
    from siddm_lab.nets.discriminator import minibatch_stddev
    h = torch.randn(8, 3, 2, 2)
    out = minibatch_stddev(h, 4)
    assert out.shape == (8, 4, 2, 2) and torch.equal(out[:, :3], h)
    groups = h.reshape(4, 2, 3, 2, 2)  # sample n = a * 2 + k is in group k
    for k in range(2):
        expect = groups[:, k].std(0, unbiased=False).mean()
        assert torch.allclose(out[k::2, 3], expect.expand(4, 2, 2), atol=1e-5)
    assert minibatch_stddev(torch.ones(4, 3, 2, 2), 4)[:, 3].abs().max() < 1e-3
    assert minibatch_stddev(torch.randn(6, 3, 2, 2), 4).shape == (6, 4, 2, 2)  # group 3 divides 6
    assert minibatch_stddev(torch.randn(1, 3, 2, 2), 4)[:, 3].abs().max() < 1e-3  # one sample: no spread

    torch.manual_seed(0)
    d = ConvDiscriminator(ch=16, norm_groups=8, mbstd_group=2)
    x, t = torch.randn(4, 1, 32, 32), torch.zeros(4, dtype=torch.long)
    base = d(x, t).logit
    x2 = x.clone()
    x2[2] = torch.randn(1, 32, 32)  # sample 2 shares its group with sample 0 (groups {0, 2} and {1, 3})
    moved = d(x2, t).logit
    assert not torch.allclose(moved[0], base[0]) and torch.allclose(moved[[1, 3]], base[[1, 3]])
    with pytest.raises(ConfigError, match="discriminator.mbstd_group=-1 is invalid"):
        ConvDiscriminator(mbstd_group=-1)
