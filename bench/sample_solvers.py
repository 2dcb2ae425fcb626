"""The diffusers solvers' cost at equal NFE: seconds per sample of DPM-Solver++ 2M/3M, UniPC, DEIS and Heun
(``siddm_lab.diffusion.solvers``) against DDIM (``DDIMSampler``) with the same number of network calls, on the
committed MNIST DDPM (1.1M-parameter UNet) or a toy MLP, in one process. Each repeat times DDIM and every solver
back to back (interleaved), so each solver's ratio to DDIM is taken within one repeat; the report gives min,
median and max of those ratios over the repeats (goal: median <= 1.05) and each side's overhead per network call
beyond the bare network (total minus NFE bare calls, over NFE). Writes bench/results/sample_solvers.{json,md}.

    python bench/sample_solvers.py [--repeats 5] [--nfe 10] [--batch 64] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sample_ddim import _sync, time_net  # noqa: E402  (the bare-network timing of the DDIM bench)

from siddm_lab.diffusion import (  # noqa: E402
    DDIMSampler,
    DEISSampler,
    DPMSolverSampler,
    GaussianDiffusion,
    HeunSampler,
    UniPCSampler,
)
from siddm_lab.models import DDPM  # noqa: E402
from siddm_lab.models.loading import load_model  # noqa: E402
from siddm_lab.nets import TimeMLP  # noqa: E402

CKPT = ROOT / "experiments" / "checkpoints" / "ddpm_mnist_cpu_step12500.ckpt"


def build(case: str, device):
    if case == "mnist_unet":
        model, _ = load_model(CKPT, "ema", device)
        return model.eval(), tuple(model.data_shape)
    torch.manual_seed(0)
    model = DDPM(TimeMLP(2, 256, 3), GaussianDiffusion.from_schedule("linear", 1000),
                 optimizer=lambda params: torch.optim.SGD(params, lr=0.0), data_shape=(2,))
    return model.to(device).eval(), (2,)


def solvers(diffusion, nfe: int) -> dict:
    """Each solver at ``nfe`` network calls with its DDIM twin (the same NFE; Heun: the largest 2S-1 <= nfe)."""
    heun_steps = (nfe + 1) // 2
    trailing = {"timestep_spacing": "trailing"}
    return {
        "DPM-Solver++ 2M": DPMSolverSampler(diffusion, steps=nfe, order=2, **trailing),
        "DPM-Solver++ 3M": DPMSolverSampler(diffusion, steps=nfe, order=3, **trailing),
        "UniPC-2 (bh2)": UniPCSampler(diffusion, steps=nfe, **trailing),
        "DEIS 2M": DEISSampler(diffusion, steps=nfe, **trailing),
        "Heun": HeunSampler(diffusion, steps=heun_steps, **trailing),
    }


@torch.no_grad()
def time_sampler(model, sampler, shape, batch, device) -> float:
    x_T = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0)).to(device)
    denoiser = model.denoiser()
    _sync(device)
    t0 = time.perf_counter()
    sampler.sample(denoiser, x_T, rng=torch.Generator(device=device).manual_seed(0))
    _sync(device)
    return time.perf_counter() - t0


def _stats(vals: list[float]) -> dict:
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cases", default="mnist_unet,toy_mlp")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    device = torch.device(args.device)
    results = {}
    for case in args.cases.split(","):
        model, shape = build(case, device)
        batch = args.batch if case == "mnist_unet" else 5000
        pairs = {}
        for name, solver in solvers(model.diffusion, args.nfe).items():
            twin = DDIMSampler(model.diffusion, 0.0, steps=solver.nfe, subsequence={"name": "trailing"})
            assert twin.nfe == solver.nfe, (name, twin.nfe, solver.nfe)
            pairs[name] = (solver, twin)
            time_sampler(model, solver, shape, batch, device)  # warm-up (diffusers' first scheduler build)
            time_sampler(model, twin, shape, batch, device)
        times = {name: {"solver": [], "ddim": []} for name in pairs}
        net = []
        for _ in range(args.repeats):  # interleaved: every pair once per repeat
            for name, (solver, twin) in pairs.items():
                times[name]["ddim"].append(time_sampler(model, twin, shape, batch, device))
                times[name]["solver"].append(time_sampler(model, solver, shape, batch, device))
            net.append(time_net(model, args.nfe, shape, batch, device) / args.nfe)
        per_call = statistics.median(net)
        for name, (solver, _) in pairs.items():
            s, d = times[name]["solver"], times[name]["ddim"]
            ratios = [a / b for a, b in zip(s, d)]
            r = {"case": case, "batch": batch, "nfe": solver.nfe, "repeats": args.repeats, "device": str(device),
                 "ratio": _stats(ratios), "solver_s_per_sample": statistics.median(s) / batch,
                 "ddim_s_per_sample": statistics.median(d) / batch,
                 "overhead_ms_per_call_solver": (statistics.median(s) / solver.nfe - per_call) * 1e3,
                 "overhead_ms_per_call_ddim": (statistics.median(d) / solver.nfe - per_call) * 1e3,
                 "network_ms_per_call": per_call * 1e3}
            results[f"{case} {name}"] = r
            print(f"{case} {name} NFE={solver.nfe}: ratio to DDIM median {r['ratio']['median']:.3f} "
                  f"(min {r['ratio']['min']:.3f}, max {r['ratio']['max']:.3f}); {r['solver_s_per_sample'] * 1e3:.2f} "
                  f"vs {r['ddim_s_per_sample'] * 1e3:.2f} ms/sample", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    (out / f"sample_solvers{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Solvers against DDIM at equal NFE ({device}, {args.repeats} interleaved repeats)", "",
             "Ratio = solver seconds / DDIM seconds with the same number of network calls, within one repeat "
             "(goal: median <= 1.05). Overheads: time per network call beyond the bare network's.", "",
             "| case | solver | batch | NFE | ratio median (min–max) | solver ms/sample | DDIM ms/sample | "
             "overhead ms/call solver | overhead ms/call DDIM | network ms/call |", "|---" * 10 + "|"]
    for key, r in results.items():
        name = key.split(" ", 1)[1]
        lines.append(f"| {r['case']} | {name} | {r['batch']} | {r['nfe']} | {r['ratio']['median']:.3f} "
                     f"({r['ratio']['min']:.3f}–{r['ratio']['max']:.3f}) | {r['solver_s_per_sample'] * 1e3:.3f} | "
                     f"{r['ddim_s_per_sample'] * 1e3:.3f} | {r['overhead_ms_per_call_solver']:.2f} | "
                     f"{r['overhead_ms_per_call_ddim']:.2f} | {r['network_ms_per_call']:.2f} |")
    (out / f"sample_solvers{suffix}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
