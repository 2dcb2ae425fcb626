"""Jobs side by side: how much two training processes on the same cores slow each other, by thread setting.

Each job is a separate process doing ``--steps`` forward+backward passes of the MNIST recipe's generator
(``experiment=siddm_mnist``'s net at its batch) with ``threads`` torch threads. Measured, interleaved over
``--repeats`` rounds:

* ``solo_all``: one job alone with every core (``threads=auto`` on a quiet machine);
* ``solo_1``: one job alone with one thread;
* ``pair_all``: two jobs at once, each with every core (two plain ``siddm-train`` runs today);
* ``pair_share``: two jobs at once, each with its share (cores // 2: ``threads=1`` on two cores, or the
  parallel launcher);
* ``pair_all_passive``: as ``pair_all`` with ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep instead of spinning).

Reported: seconds per step of each job (median, min, max over rounds) and the slowdown of a paired job
against the solo job with the same threads. Writes ``bench/results/threads.{json,md}``. Run it on an
otherwise idle machine.

    python bench/threads.py [--repeats 5] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

JOB = r"""
import sys, time, torch
from hydra.utils import instantiate
sys.path.insert(0, {root!r})
from siddm_lab.config import compose
torch.set_num_threads({threads})
cfg = compose(["experiment=siddm_mnist", "paths.data_dir=/nonexistent"])
G = instantiate(cfg.net)
B, s = int(cfg.dataset.batch_size), int(cfg.dataset.image_size)
x, t, z = torch.randn(B, 1, s, s), torch.randint(0, 4, (B,)), torch.randn(B, int(cfg.model.nz))
G(x, t, z).pow(2).mean().backward()  # warm-up
print("ready", flush=True)
sys.stdin.readline()  # start together
t0 = time.perf_counter()
for _ in range({steps}):
    G(x, t, z).pow(2).mean().backward()
print((time.perf_counter() - t0) / {steps}, flush=True)
"""


def run_jobs(n: int, threads: int, steps: int, env_extra: dict | None = None) -> list[float]:
    """Seconds per step of each of ``n`` jobs started together."""
    env = {**os.environ, **(env_extra or {})}
    env.pop("OMP_NUM_THREADS", None)
    code = JOB.format(root=str(ROOT), threads=threads, steps=steps)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(n)]
    for p in procs:  # every job has built its net and warmed up
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    out = [float(p.stdout.readline()) for p in procs]
    for p in procs:
        p.wait()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    if args.repeats < 5:
        ap.error("--repeats must be >= 5")
    cores = len(os.sched_getaffinity(0))
    share = max(1, cores // 2)
    cases = {
        "solo_all": (1, cores, None), "solo_1": (1, 1, None), "solo_share": (1, share, None),
        "pair_all": (2, cores, None), "pair_share": (2, share, None),
        "pair_all_passive": (2, cores, {"OMP_WAIT_POLICY": "PASSIVE"}),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for i in range(args.repeats):  # interleaved rounds, the order rotated each round
        names = list(cases)
        names = names[i % len(names):] + names[:i % len(names)]
        for name in names:
            n, threads, env = cases[name]
            times[name] += run_jobs(n, threads, args.steps, env)
        print(f"round {i + 1}: " + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    r = {"cores": cores, "steps": args.steps, "repeats": args.repeats,
         "s_per_step": {k: {"median": med[k], "min": min(v), "max": max(v), "all": v} for k, v in times.items()},
         "slowdown": {"pair_all_vs_solo_all": med["pair_all"] / med["solo_all"],
                      "pair_share_vs_solo_share": med["pair_share"] / med["solo_share"],
                      "pair_all_passive_vs_solo_all": med["pair_all_passive"] / med["solo_all"],
                      "pair_all_vs_pair_share": med["pair_all"] / med["pair_share"]}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "threads.json").write_text(json.dumps(r, indent=2) + "\n")
    lines = ["# Two jobs side by side on the same cores (MNIST recipe's generator, forward + backward)", "",
             f"`python bench/threads.py --steps {args.steps} --repeats {args.repeats}`: {cores} cores, {args.steps} steps per job, median over {args.repeats} "
             "interleaved rounds (pairs: both jobs of every round).", "",
             "| case | jobs | threads per job | s/step median | min | max |", "|---|---|---|---|---|---|"]
    for k, (n, threads, env) in cases.items():
        s = r["s_per_step"][k]
        note = " (OMP_WAIT_POLICY=PASSIVE)" if env else ""
        lines.append(f"| {k}{note} | {n} | {threads} | {s['median']:.3f} | {s['min']:.3f} | {s['max']:.3f} |")
    lines += ["", "| slowdown | ratio |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in r["slowdown"].items()]
    (out / "threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
