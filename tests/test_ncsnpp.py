"""DDGAN's nets (NCSN++ generator, small and large discriminators) against the reference implementation
(NVlabs/denoising-diffusion-gan): parameter counts, initialisation, outputs with the reference's weights
(tests/data/ddgan_reference, produced by its make_fixture.py), the key mapping, SIDDM's heads, gradients
and argument errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from siddm_lab.errors import CheckpointError, ConfigError
from siddm_lab.nets import (
    DDGANDiscriminatorLarge,
    DDGANDiscriminatorSmall,
    NCSNpp,
    from_ddgan_state_dict,
    to_ddgan_state_dict,
)

FIXTURE = Path(__file__).parent / "data" / "ddgan_reference" / "fixture.pt"
DISCRIMINATORS = {"small": DDGANDiscriminatorSmall, "large": DDGANDiscriminatorLarge}
# The reference's counts (train_ddgan.py's nets built on CPU: NCSNpp with the CIFAR-10 command, the
# discriminators as train_ddgan.py builds them, nc = 2 x 3 channels, ngf 64, t_emb_dim 256)
PARAMS = {"generator": 48_432_515, "generator_celeba_256": 39_726_979, "small": 12_741_633, "large": 27_737_217}
CELEBA_256 = dict(image_size=256, num_channels_dae=64, ch_mult=(1, 1, 2, 2, 4, 4), n_mlp=3)


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURE, weights_only=True)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def floats(state: dict) -> dict:
    return {k: v.float() for k, v in state.items()}


def load_generator(case: dict) -> NCSNpp:
    net = NCSNpp(**case["kwargs"]).eval()
    net.load_state_dict(from_ddgan_state_dict(floats(case["state_dict"]), net))
    return net


def load_discriminator(name: str, case: dict):
    net = DISCRIMINATORS[name](**case["kwargs"]).eval()
    net.load_state_dict(from_ddgan_state_dict(floats(case["state_dict"]), net))
    return net


def test_fixture_is_small_and_plain():
    assert FIXTURE.stat().st_size < 1.5e6
    torch.load(FIXTURE, weights_only=True)  # plain tensors and containers only


@pytest.fixture(scope="module")
def full_nets():
    torch.manual_seed(0)
    return {"generator": NCSNpp(), "small": DDGANDiscriminatorSmall(joint=True),
            "large": DDGANDiscriminatorLarge(joint=True)}


def test_full_size_parameter_counts_are_the_references(full_nets, ref):
    """DDGAN's CIFAR-10 generator 48.43M, Discriminator_small 12.74M, Discriminator_large 27.74M, the
    CelebA-HQ-256 generator 39.73M: the exact counts of the reference code."""
    assert ref["param_counts"] == PARAMS
    for name in ("generator", "small", "large"):
        assert n_params(full_nets[name]) == PARAMS[name], name
    assert n_params(NCSNpp(**CELEBA_256)) == PARAMS["generator_celeba_256"]


def test_full_size_initialisation_follows_the_reference(full_nets, ref):
    """Every weight starts as the reference's does: the same constants (zero biases, AdaGN's γ bias 1,
    GroupNorm 1 / 0) and uniform draws of the same spread (its two variance-scaling rules, the near-zero
    scale of the last convolutions), per reference key."""
    for name, net in full_nets.items():
        stats = ref["init_stats"][name]
        mapping = net.ddgan_key_map()
        own = net.state_dict()
        assert sorted(stats["keys"]) == sorted(mapping)
        for key, (numel, mean, std) in zip(stats["keys"], stats["values"].tolist()):
            w = own[mapping[key][0]].double()
            assert w.numel() == numel, key
            if std == 0:
                assert w.mean().item() == pytest.approx(mean, abs=1e-12), key
                assert w.std().item() == 0 if numel > 1 else True, key
            elif numel >= 200:
                assert w.std().item() == pytest.approx(std, rel=0.1), key


@pytest.mark.parametrize("case", ["biggan_residual", "ddpm_skip_cat", "oneadagn_nofir", "biggan_nofir_input_skip"])
def test_generator_gives_the_reference_outputs(ref, case):
    """With the reference's weights the generator computes the reference's x0' (max abs diff <= 1e-5): the
    CIFAR-10 layout (BigGAN blocks, FIR, residual input pyramid) narrowed, and the other block types,
    pyramids and resampling the reference runs."""
    c = ref["generators"][case]
    net = load_generator(c)
    with torch.no_grad():
        out = net(c["x_t"].float(), c["t"], c["z"].float())
    assert out.shape == c["out"].shape
    assert (out - c["out"]).abs().max().item() <= 1e-5
    assert c["out"].abs().max() > 0.5  # the reference's output is not a near-zero start


@pytest.mark.parametrize("name", ["small", "large"])
def test_joint_discriminator_gives_the_reference_logits(ref, name):
    """DDGAN's D(x_{t-1}, t, x_t) with the reference's weights gives its logits (max abs diff <= 1e-5),
    minibatch-std groups included (a batch of 8 in groups of 4 for the small one)."""
    c = ref["discriminators"][name]
    net = load_discriminator(name, c)
    with torch.no_grad():
        out = net(c["x_prev"].float(), c["t"], c["x_t"].float())
    assert out.logit.shape == c["out"].shape and out.cond is None and out.aux is None
    assert (out.logit - c["out"]).abs().max().item() <= 1e-5
    assert c["out"].abs().max() > 0.1


def test_key_mapping_round_trips(ref):
    """to_ddgan_state_dict inverts from_ddgan_state_dict: the reference's keys and tensors come back exactly
    (the attention's NIN matrices transposed to 1x1 convolutions and back)."""
    for case in ref["generators"].values():
        back = to_ddgan_state_dict(load_generator(case))
        assert back.keys() == case["state_dict"].keys()
        assert all(torch.equal(back[k], v.float()) for k, v in case["state_dict"].items())
    for name, case in ref["discriminators"].items():
        back = to_ddgan_state_dict(load_discriminator(name, case))
        assert back.keys() == case["state_dict"].keys()
        assert all(torch.equal(back[k], v.float()) for k, v in case["state_dict"].items())


def test_key_mapping_errors_name_the_keys(ref):
    c = ref["generators"]["biggan_residual"]
    state = floats(c["state_dict"])
    net = NCSNpp(**c["kwargs"])
    ddp = {f"module.{k}": v for k, v in state.items()}  # as train_ddgan.py saves it under DDP
    assert from_ddgan_state_dict(ddp, net).keys() == net.state_dict().keys()
    with pytest.raises(CheckpointError, match=r"has no place for: all_modules\.99\.weight"):
        from_ddgan_state_dict({**state, "all_modules.99.weight": torch.zeros(1)}, net)
    missing = dict(state)
    missing.pop("z_transform.1.weight")
    with pytest.raises(CheckpointError, match=r"lacks: z_transform\.1\.weight"):
        from_ddgan_state_dict(missing, net)
    with pytest.raises(CheckpointError, match="shapes that differ"):  # another width
        from_ddgan_state_dict(state, NCSNpp(**{**c["kwargs"], "num_channels_dae": 32}))
    d = ref["discriminators"]["small"]
    marginal = DDGANDiscriminatorSmall(**{**d["kwargs"], "joint": False})
    with pytest.raises(CheckpointError, match=r"start_conv\.weight \(8, 6, 1, 1\) -> start_conv\.weight \(8, 3, 1"):
        from_ddgan_state_dict(floats(d["state_dict"]), marginal)
    headed = DDGANDiscriminatorSmall(**d["kwargs"], aux_head=True)
    with pytest.raises(CheckpointError, match=r"lacks: decoder\.0\.conv1\.weight"):
        from_ddgan_state_dict(floats(d["state_dict"]), headed)
    partial = from_ddgan_state_dict(floats(d["state_dict"]), headed, strict=False)
    assert headed.load_state_dict(partial, strict=False).missing_keys == [
        k for k in headed.state_dict() if k.startswith(("decoder.", "aux."))]


NARROW_D = {"small": dict(image_size=16, ngf=4, t_emb_dim=16), "large": dict(image_size=64, ngf=2, t_emb_dim=16)}


@pytest.mark.parametrize("name", ["small", "large"])
@pytest.mark.parametrize("joint", [False, True])
def test_discriminator_heads_shapes_and_per_sample(name, joint):
    """SIDDM's heads predict images (x_t for C_ψ, x0 for the regulariser) from a UNet decoder on the
    encoder; a head's output for a sample does not depend on the rest of the batch (the minibatch-std
    feature feeds only the logit). The marginal form takes no x_t."""
    torch.manual_seed(0)
    kw = NARROW_D[name]
    s = kw["image_size"]
    net = DISCRIMINATORS[name](in_channels=3, joint=joint, cond_head=True, aux_head=True, **kw)
    x_prev, x_t, t = torch.randn(4, 3, s, s), torch.randn(4, 3, s, s), torch.tensor([0, 1, 2, 3])
    out = net(x_prev, t, x_t if joint else None, heads=("logit", "cond", "aux"))
    assert out.logit.shape == (4,) and out.cond.shape == out.aux.shape == (4, 3, s, s)
    one = net(x_prev[:1], t[:1], x_t[:1] if joint else None, heads=("cond", "aux"))
    assert one.logit is None
    torch.testing.assert_close(one.cond, out.cond[:1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one.aux, out.aux[:1], rtol=1e-5, atol=1e-6)
    if joint:
        with pytest.raises(ValueError, match="needs x_t"):
            net(x_prev, t, heads=("logit",))


def test_heads_not_requested_are_not_built():
    plain = DDGANDiscriminatorSmall(image_size=16, ngf=4, t_emb_dim=16)
    assert plain.decoder is None and plain.cond is None and plain.aux is None
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    for head in ("cond", "aux"):
        with pytest.raises(ValueError, match=f"no '{head}' head"):
            plain(x, t, heads=("logit", head))
    with pytest.raises(ValueError, match="unknown discriminator heads"):
        plain(x, t, heads=("score",))
    cond_only = DDGANDiscriminatorSmall(image_size=16, ngf=4, t_emb_dim=16, cond_head=True)
    assert cond_only.decoder is not None and cond_only.aux is None
    assert n_params(plain) < n_params(cond_only) < n_params(
        DDGANDiscriminatorSmall(image_size=16, ngf=4, t_emb_dim=16, cond_head=True, aux_head=True))


@pytest.mark.parametrize("heads", [(), ("cond",), ("aux",), ("cond", "aux")])
@pytest.mark.parametrize("name", ["small", "large"])
def test_every_discriminator_parameter_gets_a_gradient(name, heads):
    """Under plain DDP every parameter must take part: the heads a discriminator has are the heads its
    objective asks for, and then every parameter has a gradient."""
    kw = NARROW_D[name]
    s = kw["image_size"]
    net = DISCRIMINATORS[name](in_channels=1, cond_head="cond" in heads, aux_head="aux" in heads, **kw)
    out = net(torch.randn(4, 1, s, s), torch.tensor([0, 1, 2, 3]), heads=("logit", *heads))
    loss = out.logit.sum() + sum(getattr(out, h).sum() for h in heads)
    loss.backward()
    assert [k for k, p in net.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("kw", [{}, {"resblock_type": "ddpm", "resamp_with_conv": False, "progressive": "output_skip",
                                     "progressive_input": "input_skip", "progressive_combine": "cat"}])
def test_every_generator_parameter_gets_a_gradient_and_z_matters(kw):
    torch.manual_seed(0)
    net = NCSNpp(in_channels=1, image_size=8, num_channels_dae=8, ch_mult=(1, 2), num_res_blocks=1,
                 attn_resolutions=(4,), cond_dim=4, z_emb_dim=8, n_mlp=1, **kw)
    assert net.cond_dim == 4
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0, 3])
    out = net(x, t, torch.randn(2, 4))
    assert out.shape == x.shape and out.abs().max() <= 1  # tanh
    out.sum().backward()
    assert [k for k, p in net.named_parameters() if p.grad is None] == []
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        assert not torch.allclose(net(x, t, torch.zeros(2, 4)), net(x, t, torch.ones(2, 4)))
        assert not torch.allclose(net(x, t, torch.ones(2, 4)), net(x, t.flip(0), torch.ones(2, 4)))
    with pytest.raises(ValueError, match="latent z of size 4"):
        net(x, t)


@pytest.mark.parametrize(
    "build,expected",
    [
        (lambda: NCSNpp(image_size=30), "net.image_size=30 is not divisible by 2**(len(net.ch_mult)-1)=8"),
        (lambda: NCSNpp(image_size=8, ch_mult=(1, 2, 2, 2, 2)), "net.ch_mult with at most 4 entries"),
        (lambda: NCSNpp(resblock_type="resnet"),
         "net.resblock_type='resnet' is invalid: expected one of 'biggan', 'biggan_oneadagn', 'ddpm'"),
        (lambda: NCSNpp(progressive_input="skip"),
         "net.progressive_input='skip' is invalid: expected one of 'none', 'input_skip', 'residual'"),
        (lambda: NCSNpp(progressive_combine="max"), "net.progressive_combine='max' is invalid: expected one of"),
        (lambda: NCSNpp(progressive="residual"), "net.progressive='residual' is invalid: the reference's residual"),
        (lambda: NCSNpp(progressive="output_skip", fir=False),
         "net.progressive='output_skip' with net.fir=false up-samples with layers that do not run"),
        (lambda: NCSNpp(resblock_type="ddpm"), "net.resblock_type='ddpm' with net.resamp_with_conv=true"),
        (lambda: NCSNpp(num_channels_dae=2), "net.num_channels_dae=2 with net.ch_mult=[1, 2, 2, 2] gives a block of "
                                             "2 channels, which GroupNorm's min(C // 4, 32) = 0 groups"),
        (lambda: NCSNpp(num_channels_dae=144, ch_mult=(1,), attn_resolutions=()),
         "allowed: net.num_channels_dae a multiple of 32"),
        (lambda: NCSNpp(ch_mult=[]), "net.ch_mult=[] is invalid: expected a non-empty list of integers >= 1"),
        (lambda: NCSNpp(num_channels_dae="128"), "net.num_channels_dae='128' is invalid: expected an integer >= 1"),
        (lambda: NCSNpp(cond_dim=0), "net.cond_dim=0 is invalid: expected an integer >= 1"),
        (lambda: NCSNpp(n_mlp=-1), "net.n_mlp=-1 is invalid: expected an integer >= 0"),
        (lambda: NCSNpp(dropout=1.5), "net.dropout=1.5 is invalid: expected a number in [0, 1)"),
        (lambda: NCSNpp(fir="yes"), "net.fir='yes' is invalid: expected true or false"),
        (lambda: NCSNpp(fir_kernel=[1]), "net.fir_kernel=[1] is invalid: expected a list of at least 2"),
        (lambda: NCSNpp(attn_resolutions=16), "net.attn_resolutions=16 is invalid: expected a list of integers"),
        (lambda: DDGANDiscriminatorSmall(image_size=20),
         "discriminator.image_size=20 is not divisible by 8: DDGAN's small discriminator halves the image 3 times"),
        (lambda: DDGANDiscriminatorLarge(image_size=32), "discriminator.image_size=32 is not divisible by 64"),
        (lambda: DDGANDiscriminatorSmall(ngf=0), "discriminator.ngf=0 is invalid: expected an integer >= 1"),
        (lambda: DDGANDiscriminatorSmall(t_emb_dim=2),
         "discriminator.t_emb_dim=2 is invalid: expected an integer >= 4"),
        (lambda: DDGANDiscriminatorSmall(cond_head="yes"), "discriminator.cond_head='yes' is invalid: expected true"),
    ],
)
def test_bad_arguments_are_config_errors_naming_the_key(build, expected):
    with pytest.raises(ConfigError) as e:
        build()
    assert expected in str(e.value)


def test_any_batch_size():
    """The reference's minibatch-std grouping needs B < 4 or a multiple of 4; other batches use the largest
    group <= 4 that divides them."""
    net = DDGANDiscriminatorSmall(image_size=8, ngf=2, t_emb_dim=8)
    for b in (1, 3, 5, 6):
        assert net(torch.randn(b, 3, 8, 8), torch.zeros(b, dtype=torch.long)).logit.shape == (b,)


# The image recipe's nets through the real configs, narrowed to sklearn's 8x8 digits
NARROW_CFG = ["dataset=digits", "net=ncsnpp_gen", "discriminator=ddgan_small", "schedule=ddgan_vp", "diffusion.steps=4",
              "model.nz=8", "net.num_channels_dae=16", "net.ch_mult=[1,2]", "net.num_res_blocks=1",
              "net.attn_resolutions=[4]", "net.z_emb_dim=16", "net.n_mlp=1", "discriminator.ngf=4",
              "discriminator.t_emb_dim=16", "model.objective.lazy_reg=2"]


@pytest.mark.parametrize("model", ["siddm_image", "ddgan_image"])
def test_image_gan_iteration_with_ddgan_nets(model):
    """One D and one G objective evaluation of SIDDM (marginal D with both heads) and DDGAN (joint D) on
    these nets: finite terms, and every parameter of each stepped net takes part."""
    from hydra.utils import instantiate

    from tests.helpers import compose_cfg

    torch.manual_seed(0)
    m = instantiate(compose_cfg([f"model={model}", *NARROW_CFG]).model)
    assert isinstance(m.generator, NCSNpp) and isinstance(m.discriminator, DDGANDiscriminatorSmall)
    assert m.discriminator.joint == (model == "ddgan_image")
    assert (m.discriminator.decoder is None) == (model == "ddgan_image")
    x0 = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    d = m.objective.d_terms(m.parts(), x0, 0)
    assert all(torch.isfinite(v) for v in d.values())
    assert {"disc_reg", "entropy_c"} <= set(d) if model == "siddm_image" else set(d) == {"d_real", "d_fake", "r1"}
    sum(d.values()).backward()
    assert [n for n, p in m.discriminator.named_parameters() if p.grad is None] == []
    m.zero_grad(set_to_none=True)
    g = m.objective.g_terms(m.parts(), x0, 0)
    sum(g.values()).backward()
    assert [n for n, p in m.generator.named_parameters() if p.grad is None] == []
