"""Toy-table throughput: the seeds of a sweep cell trained as one ensemble (one process, ``seeds=[...]``)
vs one job per process (each seed its own ``siddm-train`` run), same config, iterations and evaluation.

Two measurements, both as ratios old / new taken in this process with the sides interleaved:

* ``end_to_end``: wall time from process start to exit (imports, data, training, checkpoints, final
  evaluation), summed over the seeds of the cell. A table of C cells x S seeds costs C times this, so the
  ratio is the table's ratio of iterations per wall-second.
* ``per_iteration``: the training step alone, in this process: one ensemble step of E members vs E steps
  of single models (same nets, batch and objective, Lightning left out).

    python bench/toy_table_throughput.py [--repeats 5] [--iters 400] [--threads 2] [--device cuda] [-- OVERRIDES...]

Writes bench/results/toy_table_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_CELL = ["experiment=siddm_toy", "diffusion.steps=4"]  # the table's SIDDM T=4 cell


def run_cli(overrides, out_dir, threads):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "siddm_lab.train", *overrides, f"hydra.run.dir={out_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"siddm-train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def end_to_end(cell, seeds, iters, repeats, threads, device="cpu"):
    common = [*cell, *(["trainer=gpu"] if device == "cuda" else []), f"trainer.max_steps={iters}",
              f"trainer.val_check_interval={iters}", "callbacks.evaluation.num_samples=0",
              "eval.num_samples=2000", "eval.batch_size=2000", "logger=none", "trainer.enable_progress_bar=false"]
    old, new = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for side in ("old", "new") if r % 2 == 0 else ("new", "old"):
                if side == "old":
                    old.append(sum(run_cli([*common, f"seed={s}"], f"{tmp}/old_{r}_{s}", threads) for s in seeds))
                else:
                    new.append(run_cli([*common, f"seeds=[{','.join(map(str, seeds))}]"], f"{tmp}/new_{r}", threads))
                print(f"repeat {r} {side}: {(old if side == 'old' else new)[-1]:.1f} s", flush=True)
    return old, new


def build_cell(cell, overrides, seeds, device="cpu"):
    """(model, x0): the cell's model as ``siddm-train`` builds it (single or ensemble, by ``overrides``)
    and one training batch of its data ([E, B, ...] for an ensemble)."""
    import torch
    from hydra.utils import instantiate

    from siddm_lab.config import compose
    from siddm_lab.training import build_model

    cfg = compose([*cell, *overrides])
    dm = instantiate(cfg.dataset)
    dm.setup()
    model = build_model(cfg, dm).to(device)
    model.data_shape = tuple(dm.data_shape)
    if model.members:
        model.rng = type(model.rng)([torch.Generator(device).manual_seed(s) for s in seeds])
    shape = (len(seeds), dm.batch_size) if model.members else (dm.batch_size,)
    return model, dm.train_set.data[torch.randint(0, len(dm.train_set), shape)].to(device)


def per_iteration(cell, seeds, iters, repeats, threads, device="cpu"):
    import torch

    torch.set_num_threads(threads)

    def setup(overrides):
        model, x0 = build_cell(cell, overrides, seeds, device)
        opt_g = torch.optim.Adam(model.generator.parameters(), 1e-4, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(model.discriminator.parameters(), 4e-4, betas=(0.5, 0.999))
        return model, opt_g, opt_d, x0

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step(model, opt_g, opt_d, x0):
        parts = model.parts()
        d = model.objective.d_terms(parts, x0, 0)
        opt_d.zero_grad()
        sum(d.values()).sum().backward()
        opt_d.step()
        for p in model.discriminator.parameters():
            p.requires_grad_(False)
        g = model.objective.g_terms(parts, x0, 0)
        opt_g.zero_grad()
        sum(g.values()).sum().backward()
        opt_g.step()
        for p in model.discriminator.parameters():
            p.requires_grad_(True)

    singles = [setup([f"seed={s}"]) for s in seeds]
    ensemble = setup([f"seeds=[{','.join(map(str, seeds))}]"])
    for _ in range(5):
        step(*ensemble)
        for s in singles:
            step(*s)
    old, new = [], []
    for r in range(repeats):
        for side in ("old", "new") if r % 2 == 0 else ("new", "old"):
            sync()
            t0 = time.perf_counter()
            for _ in range(iters):
                if side == "new":
                    step(*ensemble)
                else:
                    for s in singles:
                        step(*s)
            sync()
            (old if side == "old" else new).append((time.perf_counter() - t0) / iters)
    return old, new


def arithmetic(cell, seeds, iters, threads):
    """Matmul FLOPs of one ensemble iteration (D and G terms, forward + backward; R1 off, as
    FlopCounterMode cannot trace its double backward) and the rate this machine achieves on it: when
    that rate is near the CPU's arithmetic limit, batching the members cannot cut the time."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(threads)
    model, x0 = build_cell(cell, [f"seeds=[{','.join(map(str, seeds))}]", "model.objective.r1_gamma=0"], seeds)
    parts = model.parts()

    def terms():
        sum(model.objective.d_terms(parts, x0, 0).values()).sum().backward()
        sum(model.objective.g_terms(parts, x0, 0).values()).sum().backward()

    with FlopCounterMode(display=False) as counter:
        terms()
    for _ in range(5):
        terms()
    t0 = time.perf_counter()
    for _ in range(iters):
        terms()
    seconds = (time.perf_counter() - t0) / iters
    flops = counter.get_total_flops()
    return {"gflop_per_iteration": flops / 1e9, "seconds_per_iteration": seconds,
            "gflop_per_second": flops / seconds / 1e9, "members": len(seeds), "batch": x0.shape[1]}


def summary(old, new, unit):
    ratios = [o / n for o, n in zip(old, new)]
    return {"old": old, "new": new, "unit": unit, "ratios": ratios, "ratio_min": min(ratios),
            "ratio_median": statistics.median(ratios), "ratio_max": max(ratios)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=400, help="training iterations per run (end to end)")
    ap.add_argument("--step-iters", type=int, default=30, help="iterations per timing (per_iteration)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-end-to-end", action="store_true")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("overrides", nargs="*", help="the cell's config (default: " + " ".join(DEFAULT_CELL) + ")")
    args = ap.parse_args()
    cell = args.overrides or DEFAULT_CELL
    seeds = [int(s) for s in args.seeds.split(",")]
    result = {"cell": cell, "seeds": seeds, "threads": args.threads, "repeats": args.repeats, "device": args.device,
              "torch_threads_note": "OMP_NUM_THREADS / torch.set_num_threads for both sides"}
    old, new = per_iteration(cell, seeds, args.step_iters, args.repeats, args.threads, args.device)
    result["per_iteration"] = summary(old, new, "seconds per iteration of the whole cell (all seeds)")
    print(json.dumps(result["per_iteration"], indent=1))
    if args.device == "cpu":
        result["arithmetic"] = arithmetic(cell, seeds, args.step_iters, args.threads)
        print(json.dumps(result["arithmetic"], indent=1))
    if not args.skip_end_to_end:
        old, new = end_to_end(cell, seeds, args.iters, args.repeats, args.threads, args.device)
        result["end_to_end"] = {**summary(old, new, "wall seconds for the cell (all seeds)"),
                                "iterations": args.iters,
                                "iterations_per_second_old": args.iters * len(seeds) / statistics.median(old),
                                "iterations_per_second_new": args.iters * len(seeds) / statistics.median(new)}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = "toy_table_throughput" + ("_cuda" if args.device == "cuda" else "")
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Toy-table throughput: {len(seeds)} seeds as one ensemble vs one job per process",
             "", f"cell: `{' '.join(cell)}`, seeds {seeds}, device {args.device}, {args.threads} threads per process, "
             f"{args.repeats} interleaved repeats; ratio = old / new (> 1: the ensemble is faster)", "",
             "| measurement | old (median) | new (median) | ratio min | ratio median | ratio max |", "|---" * 6 + "|"]
    for key in ("per_iteration", "end_to_end"):
        if key in result:
            r = result[key]
            old_m, new_m = statistics.median(r["old"]), statistics.median(r["new"])
            lines.append(f"| {key} ({r['unit']}) | {old_m:.4g} | {new_m:.4g} "
                         f"| {r['ratio_min']:.3f} | {r['ratio_median']:.3f} | {r['ratio_max']:.3f} |")
    if "arithmetic" in result:
        a = result["arithmetic"]
        lines += ["", f"arithmetic: one ensemble iteration ({a['members']} members, batch {a['batch']}, R1 off) is "
                  f"{a['gflop_per_iteration']:.2f} GFLOP of matmuls, done in "
                  f"{1e3 * a['seconds_per_iteration']:.1f} ms: "
                  f"{a['gflop_per_second']:.0f} GFLOP/s on {args.threads} threads (the work is arithmetic, not "
                  f"per-call overhead, so stacking members cannot make it much faster on this device)"]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
