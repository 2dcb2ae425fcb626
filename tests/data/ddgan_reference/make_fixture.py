"""Produce tests/data/ddgan_reference/fixture.pt from the reference DDGAN code (NVlabs/denoising-diffusion-gan).

    python tests/data/ddgan_reference/make_fixture.py /path/to/denoising-diffusion-gan [--check-full]

The reference is imported from the given checkout (nothing of it is copied here). Its custom CUDA ops are
compiled at import time by ``torch.utils.cpp_extension.load``; that is replaced by a no-op before the import,
so the reference runs its native CPU paths (upfirdn2d_native; the models do not use fused_leaky_relu).

The fixture holds plain tensors and dicts (``torch.load(weights_only=True)``):
  generators[name]: kwargs (siddm_lab.nets.NCSNpp's), ref_args (the reference's), state_dict (the reference's
      keys), x_t, t, z, out = NCSNpp_ref(x_t, t, z)
  discriminators[small|large]: kwargs (the siddm_lab class's), ref_args, state_dict, x_prev, x_t, t,
      out = D_ref(x_prev, t, x_t) flattened to [B]
Weights and inputs hold float16 values and are stored as float16 (exact in float32, half the size); the
reference ran in float32 and its outputs are stored as float32.
  param_counts: the full-size nets' parameter counts (CIFAR-10 generator, Discriminator_small and _large
      as train_ddgan.py builds them, CelebA-HQ-256 generator)
  init_stats[generator|small|large]: keys (the reference's) and values [K, 3]: (numel, mean, std) of the
      full-size nets' initial weights (seed 0)
The small nets' weights are the reference's initialisation plus Gaussian noise (std 1/sqrt(fan_in) for
matrices and kernels, 0.1 for vectors), so that every path (including the near-zero-initialised last
convolutions) shapes the outputs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.utils.cpp_extension

HERE = Path(__file__).resolve().parent

# CIFAR-10 defaults of train_ddgan.py (with the README's command) in the reference's names
REF_DEFAULTS = dict(image_size=32, num_channels=3, centered=True, num_channels_dae=128, n_mlp=4, ch_mult=[1, 2, 2, 2],
                    num_res_blocks=2, attn_resolutions=(16,), dropout=0.0, resamp_with_conv=True, conditional=True,
                    fir=True, fir_kernel=[1, 3, 3, 1], skip_rescale=True, resblock_type="biggan", progressive="none",
                    progressive_input="residual", progressive_combine="sum", embedding_type="positional",
                    fourier_scale=16.0, not_use_tanh=False, nz=100, z_emb_dim=256)

GENERATORS = {
    # the CIFAR-10 layout, narrow
    "biggan_residual": dict(image_size=16, num_channels_dae=16, ch_mult=[1, 2], num_res_blocks=1,
                            attn_resolutions=[8], nz=8, z_emb_dim=16, n_mlp=2),
    # DDPM blocks (FIR resampling, no conv), three levels of two blocks, attention at two levels, input
    # pyramid concatenated, output pyramid summed, no skip rescale, inputs in [0, 1]
    "ddpm_skip_cat": dict(image_size=8, num_channels_dae=4, ch_mult=[1, 2, 2], num_res_blocks=2,
                          attn_resolutions=[8, 2], nz=4, z_emb_dim=8, n_mlp=1, resblock_type="ddpm",
                          resamp_with_conv=False, progressive="output_skip", progressive_input="input_skip",
                          progressive_combine="cat", skip_rescale=False, centered=False),
    # one AdaGN per block, nearest/mean resampling, the residual input pyramid with a strided conv, no tanh
    "oneadagn_nofir": dict(image_size=8, num_channels_dae=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4],
                           nz=4, z_emb_dim=8, n_mlp=1, resblock_type="biggan_oneadagn", fir=False,
                           not_use_tanh=True),
    # BigGAN blocks without FIR, the input pyramid by 2x2 means summed
    "biggan_nofir_input_skip": dict(image_size=8, num_channels_dae=8, ch_mult=[1, 2], num_res_blocks=1,
                                    attn_resolutions=[4], nz=4, z_emb_dim=8, n_mlp=1, fir=False,
                                    progressive_input="input_skip"),
}
DISCRIMINATORS = {  # joint: the reference's nc = 2 * image channels
    "small": dict(channels=3, ngf=4, t_emb_dim=16, image_size=8, batch=8),
    "large": dict(channels=1, ngf=2, t_emb_dim=16, image_size=64, batch=4),
}


def our_kwargs(ref: dict) -> dict:
    """NCSNpp's keyword arguments for reference args (the names are the reference's but two)."""
    skip = {"num_channels", "nz", "conditional", "embedding_type", "fourier_scale"}
    out = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in ref.items() if k not in skip}
    return {**out, "in_channels": ref["num_channels"], "cond_dim": ref["nz"]}


def perturb_(net: torch.nn.Module, gen: torch.Generator, half: bool = True) -> None:
    """Add noise to the initial weights; with ``half`` round them to float16 values (stored as float16)."""
    with torch.no_grad():
        for p in net.parameters():
            std = 0.1 if p.dim() == 1 else (p[0].numel()) ** -0.5
            p.add_(torch.randn(p.shape, generator=gen) * std)
            if half:
                p.copy_(p.half().float())


def randn(*shape, gen: torch.Generator) -> torch.Tensor:
    """Inputs with float16 values (stored as float16, exact in float32)."""
    return torch.randn(*shape, generator=gen).half().float()


def half(state: dict) -> dict:
    return {k: v.half() for k, v in state.items()}


def stats(net: torch.nn.Module) -> dict:
    """keys, and per key (numel, mean, std) as one [K, 3] tensor."""
    keys = list(net.state_dict())
    rows = [[v.numel(), v.double().mean(), v.double().std() if v.numel() > 1 else 0.0]
            for v in net.state_dict().values()]
    return {"keys": keys, "values": torch.tensor(rows, dtype=torch.float64)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path, help="a checkout of NVlabs/denoising-diffusion-gan")
    parser.add_argument("--out", type=Path, default=HERE / "fixture.pt")
    parser.add_argument("--check-full", action="store_true",
                        help="also compare siddm_lab with the reference on the full-size nets (printed, not saved)")
    args = parser.parse_args()
    torch.utils.cpp_extension.load = lambda *a, **k: None  # CPU: the reference's native paths
    sys.path.insert(0, str(args.reference))
    from score_sde.models.discriminator import Discriminator_large, Discriminator_small
    from score_sde.models.ncsnpp_generator_adagn import NCSNpp as RefNCSNpp

    sys.path.insert(0, str(HERE.parents[2]))
    from siddm_lab.nets import DDGANDiscriminatorLarge, DDGANDiscriminatorSmall, NCSNpp, from_ddgan_state_dict

    torch.set_grad_enabled(False)
    ref_d = {"small": Discriminator_small, "large": Discriminator_large}
    our_d = {"small": DDGANDiscriminatorSmall, "large": DDGANDiscriminatorLarge}
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    fixture: dict = {"generators": {}, "discriminators": {}, "param_counts": {}, "init_stats": {}}

    def compare(name, ours_out, ref_out):
        diff = (ours_out - ref_out).abs().max().item()
        print(f"{name}: max |siddm_lab - reference| = {diff:.3g} (max |reference| = {ref_out.abs().max():.3g})")

    for name, cfg in GENERATORS.items():
        ref_args = {**REF_DEFAULTS, **cfg}
        torch.manual_seed(0)
        net = RefNCSNpp(argparse.Namespace(**ref_args)).eval()
        gen = torch.Generator().manual_seed(1)
        perturb_(net, gen)
        B = 4
        x_t = randn(B, ref_args["num_channels"], ref_args["image_size"], ref_args["image_size"], gen=gen)
        t = torch.arange(B)
        z = randn(B, ref_args["nz"], gen=gen)
        out = net(x_t, t, z)
        kwargs = our_kwargs(ref_args)
        ours = NCSNpp(**kwargs).eval()
        ours.load_state_dict(from_ddgan_state_dict(net.state_dict(), ours))
        compare(f"generator {name} ({n(net)} parameters)", ours(x_t, t, z), out)
        fixture["generators"][name] = dict(kwargs=kwargs, ref_args={k: (list(v) if isinstance(v, tuple) else v)
                                                                   for k, v in ref_args.items()},
                                           state_dict=half(net.state_dict()), x_t=x_t.half(), t=t, z=z.half(),
                                           out=out)

    for name, cfg in DISCRIMINATORS.items():
        torch.manual_seed(0)
        c, s, B = cfg["channels"], cfg["image_size"], cfg["batch"]
        ref_args = dict(nc=2 * c, ngf=cfg["ngf"], t_emb_dim=cfg["t_emb_dim"])
        net = ref_d[name](**ref_args, act=torch.nn.LeakyReLU(0.2)).eval()
        gen = torch.Generator().manual_seed(2)
        perturb_(net, gen)
        x_prev, x_t = randn(B, c, s, s, gen=gen), randn(B, c, s, s, gen=gen)
        t = torch.arange(B) % 4
        out = net(x_prev, t, x_t)
        kwargs = dict(in_channels=c, image_size=s, ngf=cfg["ngf"], t_emb_dim=cfg["t_emb_dim"], joint=True)
        ours = our_d[name](**kwargs).eval()
        ours.load_state_dict(from_ddgan_state_dict(net.state_dict(), ours))
        compare(f"discriminator {name} ({n(net)} parameters)", ours(x_prev, t, x_t).logit, out.view(-1))
        fixture["discriminators"][name] = dict(kwargs=kwargs, ref_args=ref_args, state_dict=half(net.state_dict()),
                                               x_prev=x_prev.half(), x_t=x_t.half(), t=t, out=out.view(-1))

    torch.manual_seed(0)
    full = {
        "generator": RefNCSNpp(argparse.Namespace(**REF_DEFAULTS)),
        "small": Discriminator_small(nc=6, ngf=64, t_emb_dim=256, act=torch.nn.LeakyReLU(0.2)),
        "large": Discriminator_large(nc=6, ngf=64, t_emb_dim=256, act=torch.nn.LeakyReLU(0.2)),
    }
    celeba = {**REF_DEFAULTS, "image_size": 256, "num_channels_dae": 64, "ch_mult": [1, 1, 2, 2, 4, 4], "n_mlp": 3}
    fixture["param_counts"] = {k: n(v) for k, v in full.items()}
    fixture["param_counts"]["generator_celeba_256"] = n(RefNCSNpp(argparse.Namespace(**celeba)))
    fixture["init_stats"] = {k: stats(v) for k, v in full.items()}
    print("parameter counts:", fixture["param_counts"])

    if args.check_full:
        gen = torch.Generator().manual_seed(3)
        g = full["generator"].eval()
        perturb_(g, gen, half=False)
        x, t, z = torch.randn(4, 3, 32, 32, generator=gen), torch.arange(4), torch.randn(4, 100, generator=gen)
        ours = NCSNpp().eval()
        ours.load_state_dict(from_ddgan_state_dict(g.state_dict(), ours))
        compare("full CIFAR-10 generator", ours(x, t, z), g(x, t, z))
        for name, s in (("small", 32), ("large", 256)):
            d = full[name].eval()
            perturb_(d, gen, half=False)
            x_prev, x_t, t = torch.randn(4, 3, s, s, generator=gen), torch.randn(4, 3, s, s, generator=gen), t
            ours = our_d[name](joint=True).eval()
            ours.load_state_dict(from_ddgan_state_dict(d.state_dict(), ours))
            compare(f"full discriminator {name}", ours(x_prev, t, x_t).logit, d(x_prev, t, x_t).view(-1))

    torch.save(fixture, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
