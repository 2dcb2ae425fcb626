"""Parallel sampling vs sequential DDIM (η = 0): wall time to reach the sequential sampler's output.

For each S, the same x_T is decoded by sequential DDIM (S network calls in a row), by DEQ-DDIM
(Anderson over all S states, one batched call per iteration) and by Picard iterations (window of all
S states). The three sides are interleaved and repeated; each parallel result is checked against the
sequential one (max |difference| below ``--atol``). Reported: the ratio of wall times
(parallel / sequential: below 1 = faster), min and median with the spread over repeats, the solver
iterations (sequential depth) and total network evaluations. On a CPU the network calls are
compute-bound, so evaluating S states at once costs about S times one call: parallel sampling only
wins where a batched call costs less than its share, i.e. on an accelerator with idle width.

    python bench/parallel_sampling.py --ckpt runs/demo_comparison/ddpm_T1000/checkpoints/last.ckpt
    (without --ckpt: an analytic denoiser of Gaussian data; writes bench/results/parallel_sampling.{json,md})
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

from siddm_lab.diffusion import DDIMSampler, DEQSampler, GaussianDiffusion, PicardSampler  # noqa: E402


def analytic(T: int = 1000, s2: float = 0.5):
    diff = GaussianDiffusion.from_schedule("linear", T)
    ab_all = diff.alphas_cumprod.float()

    def predict(x, t):
        ab = ab_all[t][:, None]
        return diff.to_x0_eps("eps", x, t, (1 - ab).sqrt() * x / (ab * s2 + 1 - ab) + 0.05 * torch.tanh(x))

    return diff, predict, (2,), "analytic Gaussian-data denoiser (2-D)"


def from_checkpoint(path: str, device: str = "cpu"):
    from siddm_lab.models.loading import load_model

    model, _ = load_model(path, device=torch.device(device))
    return model.diffusion, model.predict_x0_eps, tuple(model.data_shape), f"checkpoint {path}"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", default=None, help="a DDPM/DDIM checkpoint (default: an analytic denoiser)")
    ap.add_argument("--steps", default="10,50,100,1000")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tol", type=float, default=1e-4, help="solver tolerance (relative residual / change)")
    ap.add_argument("--atol", type=float, default=1e-3, help="max |parallel - sequential| accepted")
    ap.add_argument("--forms", default="unrolled", help="chain-map forms of the parallel samplers: unrolled, "
                    "sequential or both (comma list)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "parallel_sampling"))
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    diff, predict, shape, what = from_checkpoint(args.ckpt, args.device) if args.ckpt else analytic()
    x_T = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0)).to(args.device)
    forms = args.forms.split(",")
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rows = []
    for S in [int(s) for s in args.steps.split(",")]:
        sides = {"ddim": DDIMSampler(diff, 0.0, steps=S)}
        for form in forms:
            suffix = "" if form == "unrolled" else f"_{form}"
            sides[f"deq{suffix}"] = DEQSampler(diff, steps=S, tol=args.tol, form=form)
            sides[f"picard{suffix}"] = PicardSampler(diff, steps=S, tol=args.tol, form=form)
        times = {k: [] for k in sides}
        stats, err = {}, {}
        ref = None
        for _ in range(args.repeats):  # interleaved: every repeat runs the three sides in turn
            for name, sampler in sides.items():
                seconds, out = timed(lambda s=sampler: (s.sample(predict, x_T), sync())[0])
                times[name].append(seconds)
                if name == "ddim":
                    ref = out
                else:
                    err[name] = float((out - ref).abs().max())
                    stats[name] = {k: v for k, v in sampler.last_stats.items() if k != "residuals"}
        for name in [k for k in sides if k != "ddim"]:
            ratios = [p / s for p, s in zip(times[name], times["ddim"])]
            rows.append({"S": S, "sampler": name, "ratio_min": min(ratios), "ratio_median": statistics.median(ratios),
                         "ratio_max": max(ratios), "seconds_median": statistics.median(times[name]),
                         "ddim_seconds_median": statistics.median(times["ddim"]), "max_abs_error": err[name],
                         "reached": err[name] <= args.atol, **stats[name]})
            print(rows[-1], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": what, "batch": args.batch, "repeats": args.repeats, "tol": args.tol, "atol": args.atol,
            "device": args.device, "torch_threads": torch.get_num_threads(), "forms": forms}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"Parallel sampling vs sequential DDIM (η=0), {what}, batch {args.batch}, {args.repeats} interleaved "
             f"repeats, {args.device} ({torch.get_num_threads()} threads), solver tol {args.tol}. Ratio = parallel / "
             f"sequential wall time (< 1 is faster).", "",
             "| S | sampler | ratio min | ratio median | ratio max | sequential s | iterations | NFE | "
             "max abs err | reached |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['S']} | {r['sampler']} | {r['ratio_min']:.2f} | {r['ratio_median']:.2f} | "
                     f"{r['ratio_max']:.2f} | {r['ddim_seconds_median']:.3g} | {r['iterations']} | {r['nfe']:.0f} | "
                     f"{r['max_abs_error']:.1e} | {'yes' if r['reached'] else 'no'} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
