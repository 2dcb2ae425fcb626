"""Produce tests/data/ddgan_reference/sampling.pt: what the reference DDGAN code's own sampling loop
(``sample_from_model`` of test_ddgan.py, with its ``Posterior_Coefficients``) computes with the narrow generator
``biggan_residual`` of fixture.pt.

    python tests/data/ddgan_reference/make_sampling_fixture.py /path/to/denoising-diffusion-gan

The reference is imported from the given checkout (nothing of it is copied here); its CUDA ops' compilation is
replaced by a no-op first, as in make_fixture.py. The loop draws, at every step i = T-1, ..., 0, a latent
``torch.randn(B, nz)`` then the posterior noise ``torch.randn_like(x)`` (also at i = 0, where it is masked) from
torch's global generator; this script records both by wrapping the two functions while the loop runs.

The fixture holds plain tensors and dicts (``torch.load(weights_only=True)``):
  generator: the name of the fixture.pt generator whose weights ran ("biggan_residual")
  chains[name]: T, beta_min, beta_max, use_geometric (the reference's arguments), seed (torch.manual_seed before
      the loop), x_T [B, C, H, W], latents [T, B, nz] and noises [T, B, C, H, W] in the order drawn (step T-1
      first), out = sample_from_model(...) [B, C, H, W]
  cli: the chain for T=4 whose x_T and seed are drawn as ``siddm-sample seed=0 num_samples=B batch_size=B``
      draws them (x_T = randn from a CPU generator seeded 0, then the chain's seed = randint(0, 2**62) from the
      same generator), with ``out``
It also checks (printed, not stored) how train_ddgan.py's EMA optimizer lays out the averaged weights in its
optimizer state (``content.pth``'s 'optimizerG'): state[i]['ema'] is the average of the i-th parameter of netG
in ``parameters()`` order, which is its state_dict order (the generator has no buffers).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.utils.cpp_extension

HERE = Path(__file__).resolve().parent
NAME = "biggan_residual"
CHAINS = {  # name: (T, seed): DDGAN's CIFAR-10 / LSUN T and its CelebA-HQ-256 T
    "T4": dict(T=4, seed=123),
    "T2": dict(T=2, seed=7),
}
B = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path, help="a checkout of NVlabs/denoising-diffusion-gan")
    parser.add_argument("--out", type=Path, default=HERE / "sampling.pt")
    args = parser.parse_args()
    torch.utils.cpp_extension.load = lambda *a, **k: None  # CPU: the reference's native paths
    sys.path.insert(0, str(args.reference))
    from EMA import EMA
    from score_sde.models.ncsnpp_generator_adagn import NCSNpp as RefNCSNpp
    from test_ddgan import Posterior_Coefficients, sample_from_model

    case = torch.load(HERE / "fixture.pt", weights_only=True)["generators"][NAME]
    ref_args = dict(case["ref_args"])
    net = RefNCSNpp(argparse.Namespace(**ref_args)).eval()
    net.load_state_dict({k: v.float() for k, v in case["state_dict"].items()})
    shape = (B, ref_args["num_channels"], ref_args["image_size"], ref_args["image_size"])
    opt = argparse.Namespace(nz=ref_args["nz"])

    def run(T: int, seed: int, x_T: torch.Tensor) -> dict:
        schedule = argparse.Namespace(num_timesteps=T, beta_min=0.1, beta_max=20.0, use_geometric=False)
        coefficients = Posterior_Coefficients(schedule, "cpu")
        latents, noises = [], []
        randn, randn_like = torch.randn, torch.randn_like

        def rec_randn(*a, **k):
            latents.append(randn(*a, **k))
            return latents[-1]

        def rec_randn_like(*a, **k):
            noises.append(randn_like(*a, **k))
            return noises[-1]

        torch.manual_seed(seed)
        torch.randn, torch.randn_like = rec_randn, rec_randn_like
        try:
            out = sample_from_model(coefficients, net, T, x_T.clone(), None, opt)
        finally:
            torch.randn, torch.randn_like = randn, randn_like
        assert len(latents) == len(noises) == T
        return dict(T=T, beta_min=0.1, beta_max=20.0, use_geometric=False, seed=seed, x_T=x_T,
                    latents=torch.stack(latents), noises=torch.stack(noises), out=out)

    fixture: dict = {"generator": NAME, "chains": {}}
    gen = torch.Generator().manual_seed(5)
    for name, c in CHAINS.items():
        fixture["chains"][name] = run(c["T"], c["seed"], torch.randn(shape, generator=gen))
        out = fixture["chains"][name]["out"]
        print(f"chain {name}: T={c['T']}, out range [{out.min():.3f}, {out.max():.3f}]")

    g = torch.Generator().manual_seed(0)  # as siddm-sample seed=0 draws a batch of B
    x_T = torch.randn(shape, generator=g)
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    fixture["cli"] = run(4, seed, x_T)

    # The EMA layout of content.pth's optimizerG (train_ddgan.py: EMA(Adam(netG.parameters())))
    torch.manual_seed(0)
    trained = RefNCSNpp(argparse.Namespace(**ref_args))
    optimizer = EMA(torch.optim.Adam(trained.parameters(), lr=1e-2), ema_decay=0.9)
    for _ in range(3):
        trained.zero_grad()  # as train_ddgan.py (its EMA wrapper has no zero_grad of its own)
        trained(torch.randn(shape), torch.arange(B), torch.randn(B, ref_args["nz"])).square().mean().backward()
        optimizer.step()
    # EMA shares Adam's state and param groups, so Adam's state_dict is the one train_ddgan.py saves (EMA's own
    # Optimizer.state_dict misses attributes that the torch this runs on expects)
    state = optimizer.optimizer.state_dict()
    keys = list(trained.state_dict())
    from_state = {k: state["state"][i]["ema"] for i, k in enumerate(keys)}
    optimizer.swap_parameters_with_ema(store_params_in_ema=True)  # what train_ddgan.py saves as netG_<epoch>.pth
    swapped = trained.state_dict()
    same = all(torch.equal(from_state[k], swapped[k]) for k in keys)
    print(f"content.pth layout: optimizerG['state'][i]['ema'] is the i-th state_dict entry's average: {same}")

    torch.save(fixture, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
