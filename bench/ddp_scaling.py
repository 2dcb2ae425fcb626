"""DDP scaling on CPU: the same training (DDPM on 25-Gaussians, same global batch, same number of
steps) as 1 process with 2 threads vs 2 DDP processes (gloo) with 1 thread each, i.e. the same two
cores. Runs alternate (1, 2, 1, 2, ...) so slow drifts of the machine hit both; each run's training
time is read from its metrics.json (the fit only: no start-up, no final evaluation).
Reports throughput (samples/s) and the ratio DDP / single. Writes bench/results/ddp_scaling.{json,md}.

    python bench/ddp_scaling.py [--repeats 2] [--steps 600] [--batch 1024] [--model ddpm|siddm]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODEL_ARGS = {
    "ddpm": ["diffusion.steps=1000"],
    "siddm": ["model=siddm", "net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4"],
}


def run(processes: int, steps: int, batch: int, model: str, out: Path) -> float:
    per_rank = batch // processes
    trainer = ["trainer=ddp_cpu", f"trainer.devices={processes}"] if processes > 1 else ["trainer=cpu"]
    optimizer_steps = steps * (2 if model == "siddm" else 1)
    args = [sys.executable, "-m", "siddm_lab.train", *trainer, *MODEL_ARGS[model], "logger=none",
            "trainer.enable_progress_bar=false", f"trainer.max_steps={optimizer_steps}",
            f"trainer.val_check_interval={steps}", "callbacks.evaluation.num_samples=0", "eval.num_samples=100",
            f"dataset.batch_size={per_rank}", "dataset.n_train=200000", f"hydra.run.dir={out}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(2 // processes), WANDB_MODE="disabled")
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"run failed ({processes} processes):\n{r.stderr[-3000:]}")
    return json.loads((out / "metrics.json").read_text())["train_seconds"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=600, help="training iterations per run")
    ap.add_argument("--batch", type=int, default=1024, help="global batch")
    ap.add_argument("--model", choices=sorted(MODEL_ARGS), default="ddpm")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ddp_scaling"))
    args = ap.parse_args(argv)
    times = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for p in (1, 2):
                times[p].append(run(p, args.steps, args.batch, args.model, Path(tmp) / f"{p}_{i}"))
                print(f"{p} process(es): {times[p][-1]:.1f} s", flush=True)
    best = {p: min(v) for p, v in times.items()}
    throughput = {p: args.steps * args.batch / best[p] for p in best}
    ratio = throughput[2] / throughput[1]
    result = {"model": args.model, "steps": args.steps, "global_batch": args.batch, "repeats": args.repeats,
              "seconds": times, "best_seconds": best, "samples_per_s": throughput, "ddp_over_single": ratio}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = (f"DDP scaling on CPU, {args.model}, global batch {args.batch}, {args.steps} iterations, best of "
          f"{args.repeats} (same 2 cores: 1 process x 2 threads vs 2 processes x 1 thread)\n\n"
          "| setting | seconds | samples/s |\n|---|---|---|\n"
          f"| 1 process | {best[1]:.1f} | {throughput[1]:.0f} |\n| 2 DDP processes | {best[2]:.1f} | "
          f"{throughput[2]:.0f} |\n\nthroughput ratio DDP / single: **{ratio:.3f}** "
          f"(median times {statistics.median(times[1]):.1f} / {statistics.median(times[2]):.1f} s)\n")
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
