"""How much of each MNIST diffusion GAN's x0 error its latent carries, per timestep
(``siddm_lab.diffusion.diagnostics.latent_spread``): latent_var / mean_error is ~1 for a generator that
draws x0' from the true posterior p(x0 | x_t) and 0 for one that returns the posterior mean.

    python experiments/siddm_mnist/latent_spread.py --data-dir <folder holding MNIST/raw> \
        --run SIDDM=<ckpt> --run DDGAN=<ckpt> ... [--images 256] [--latents 16] --out experiments/siddm_mnist

Writes ``latent_spread.{json,md}`` into ``--out``. The held-out images are the first ``--images`` of the
test split; x_t and the latents come from ``--seed``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from siddm_lab.diffusion import RandomSource
from siddm_lab.diffusion.diagnostics import latent_spread
from siddm_lab.models.loading import load_model
from siddm_lab.sampling import build_datamodule


def measure(ckpt: str, data_dir: str, images: int, latents: int, seed: int) -> list[dict]:
    model, cfg = load_model(ckpt)
    dm = build_datamodule(cfg, data_dir)
    dm.setup("validate")
    x0 = torch.cat(list(dm.val_dataloader()))[:images]
    rng = RandomSource.single(torch.Generator().manual_seed(seed))
    x0_of = model.denoiser(rng).x0
    return [latent_spread(x0_of, model.diffusion, x0, t, k=latents,
                          generator=torch.Generator().manual_seed(seed + 1 + t))
            for t in range(model.diffusion.num_timesteps)]


def table(rows: dict[str, list[dict]]) -> str:
    ts = [r["t"] for r in next(iter(rows.values()))]
    head = " | ".join(f"t={t}" for t in ts)
    out = ["latent_var / mean_error per timestep (1: x0' drawn from the posterior p(x0 | x_t); 0: the posterior "
           "mean), then latent_var and mse (per pixel, images in [-1, 1]) at each t", "",
           f"| model | {head} | latent_var ({', '.join(map(str, ts))}) | mse ({', '.join(map(str, ts))}) |",
           "|---|" + "---|" * (len(ts) + 2)]
    for name, rs in rows.items():
        out.append(f"| {name} | " + " | ".join(f"{r['ratio']:.2f}" for r in rs)
                   + " | " + ", ".join(f"{r['latent_var']:.3f}" for r in rs)
                   + " | " + ", ".join(f"{r['mse']:.3f}" for r in rs) + " |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="LABEL=checkpoint (repeat)")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--latents", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = {}
    for spec in args.run:
        label, sep, ckpt = spec.partition("=")
        if not sep or not label or not ckpt:
            ap.error(f"--run {spec!r}: expected LABEL=checkpoint")
        runs[label] = measure(ckpt, args.data_dir, args.images, args.latents, args.seed)
        print(label, " ".join(f"t={r['t']}: {r['ratio']:.2f}" for r in runs[label]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"images": args.images, "latents": args.latents, "seed": args.seed,
            "checkpoints": {spec.partition("=")[0]: spec.partition("=")[2] for spec in args.run}}
    (out / "latent_spread.json").write_text(json.dumps({**meta, "rows": runs}, indent=2) + "\n")
    (out / "latent_spread.md").write_text(table(runs))


if __name__ == "__main__":
    main()
