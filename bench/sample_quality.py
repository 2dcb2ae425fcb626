"""Sampling time to quality on a toy dataset: SIDDM/DDGAN with T generator steps vs DDPM with 1000
ancestral steps vs DDIM (eta=0) with 10 and 50 steps, all in one process on the same device.

Each case draws ``--num-samples`` points (after one warm-up call), the best wall time of
``--repeats`` is kept, and the samples are scored by their run's own datamodule (modes covered,
high-quality ratio, 2-D Fréchet distance). The figure of merit is the wall-time ratio to DDPM-1000,
with whether the case reaches DDPM-1000's quality (the rule of ``siddm-collect --baseline``: modes
within one of DDPM-1000's, HQ at least 90 % of it, Fréchet distance at most twice it).
Writes bench/results/sample_quality.{json,md}.

    make demo   # trains the DDPM (T=1000) and SIDDM (T=4) checkpoints of the comparison
    python bench/sample_quality.py --ddpm runs/demo_comparison/ddpm_T1000/checkpoints/last.ckpt \\
        --gan runs/demo_comparison/siddm_T4/checkpoints/last.ckpt [more SIDDM/DDGAN checkpoints]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from siddm_lab.diffusion import build_sampler  # noqa: E402
from siddm_lab.evaluation import data_metrics  # noqa: E402
from siddm_lab.models.loading import load_model  # noqa: E402
from siddm_lab.results import QUALITY_RULE, reaches_quality  # noqa: E402
from siddm_lab.sampling import build_datamodule  # noqa: E402


def run_case(model, dm, sampler, n: int, repeats: int, seed: int, batch_size: int) -> dict:
    model.sample(min(n, 256), sampler, generator=torch.Generator().manual_seed(seed),
                 batch_size=batch_size)  # warm-up
    best, samples = float("inf"), None
    for _ in range(repeats):
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        samples = model.sample(n, sampler, generator=g, batch_size=batch_size)
        if samples.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    metrics = data_metrics(dm, samples)
    return {"nfe": sampler.nfe, "seconds": best, **{k: float(v) for k, v in metrics.items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ddpm", required=True, help="DDPM/DDIM checkpoint (T=1000)")
    ap.add_argument("--gan", nargs="+", default=[], help="SIDDM / DDGAN checkpoints")
    ap.add_argument("--num-samples", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sample_quality"))
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)

    cases = []
    ddpm, cfg = load_model(args.ddpm, "ema", args.device)
    dm = build_datamodule(cfg, None)
    T = ddpm.diffusion.num_timesteps
    plans = [(f"DDPM {T} steps", build_sampler(ddpm.diffusion, "ddpm", variance_type="fixed_small")),
             ("DDIM 50 steps", build_sampler(ddpm.diffusion, "ddim", eta=0.0, steps=50)),
             ("DDIM 10 steps", build_sampler(ddpm.diffusion, "ddim", eta=0.0, steps=10))]
    for name, sampler in plans:
        cases.append({"case": name, **run_case(ddpm, dm, sampler, args.num_samples, args.repeats, args.seed,
                                               args.batch_size)})
        print(cases[-1], flush=True)
    for path in args.gan:
        model, cfg = load_model(path, "ema", args.device)
        name = f"{type(model).__name__}{'' if model.mode == 'siddm' else ' (ddgan)'} T={model.diffusion.num_timesteps}"
        case = run_case(model, build_datamodule(cfg, None), model.default_sampler(), args.num_samples, args.repeats,
                        args.seed, args.batch_size)
        cases.append({"case": name, "ckpt": path, **case})
        print(cases[-1], flush=True)

    base = cases[0]
    for c in cases:
        c["time_ratio_vs_ddpm"] = c["seconds"] / base["seconds"]
        c["reaches_ddpm_quality"] = reaches_quality(c, base)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"num_samples": args.num_samples, "repeats": args.repeats, "device": args.device,
            "torch_threads": torch.get_num_threads(), "ddpm_ckpt": args.ddpm}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "cases": cases}, indent=2))
    lines = [f"Sampling {args.num_samples} points, best of {args.repeats}, device {args.device} "
             f"({torch.get_num_threads()} threads). Quality reached: {QUALITY_RULE} (baseline: DDPM-1000).", "",
             "| case | NFE | seconds | time / DDPM-1000 | modes | HQ | FD 2-D | reaches DDPM quality |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cases:
        lines.append(f"| {c['case']} | {c['nfe']} | {c['seconds']:.3g} | {c['time_ratio_vs_ddpm']:.4f} | "
                     f"{c.get('modes_covered', float('nan')):.0f} | {c.get('hq_ratio', float('nan')):.3f} | "
                     f"{c['fd_2d']:.3g} | {'yes' if c['reaches_ddpm_quality'] else 'no'} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
