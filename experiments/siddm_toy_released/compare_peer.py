"""siddm_lab's experiment=siddm_toy_released beside the authors' released toy script, at equal iterations.

Both sides are scored by the same code (``ToyDataModule.evaluate`` of ``dataset=gaussians25_released``:
2-D FD against 250k fresh points, modes covered / HQ with the 3-std radius, standardised poly-MMD) on
their own samples:

* ours: ``samples.npz`` is K=4; the K = 1..3 metrics are in ``metrics.json`` (``name@K``);
* the peer: each run folder holds ``MOG/siddms/<name>/g_data_<K>.npy`` (500k samples per K) and a
  ``log.txt`` whose last line is ``wall_seconds N``.

    python experiments/siddm_toy_released/compare_peer.py --ours RUN_DIR [RUN_DIR ...] \\
        --peer PEER_RUN [PEER_RUN ...] --out experiments/siddm_toy_released

A peer run folder is named ``T<T>_e<epochs>_s<seed>`` (epochs of 625 iterations). Writes ``peer_vs_ours.csv``
(one row per model and K) and ``peer_vs_ours.md`` (mean ± std over seeds per budget, the difference and
whether it lies within twice its standard error: "agree").
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[2]
METRICS = ("fd_2d", "modes_covered", "hq_ratio", "mmd_poly2_std")


def datamodule():
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=["experiment=siddm_toy_released"])
    dm = instantiate(cfg.dataset)
    dm.setup()
    return dm


def peer_rows(runs, dm):
    rows = []
    for run in runs:
        run = Path(run)
        m = re.match(r"T(\d+)_e(\d+)_s(\d+)", run.name)
        if not m:
            raise SystemExit(f"error: {run} is not a peer run folder named T<T>_e<epochs>_s<seed>")
        T, epochs, seed = map(int, m.groups())
        (sub,) = list((run / "MOG" / "siddms").iterdir())
        for K in range(1, T + 1):
            x = torch.from_numpy(np.load(sub / f"g_data_{K}.npy")).float()
            metrics = dm.evaluate(x)
            rows.append({"source": "peer", "seed": seed, "iterations": epochs * 625, "K": K,
                         **{k: float(metrics[k]) for k in METRICS}})
    return rows


def our_rows(runs):
    rows = []
    for run in runs:
        for mfile in sorted(Path(run).rglob("metrics.json")):
            m = json.loads(mfile.read_text())
            for K in range(1, 5):
                src = {k: m[k] for k in METRICS} if K == m["nfe"] else {k: m.get(f"{k}@{K}") for k in METRICS}
                if None in src.values():
                    continue
                rows.append({"source": "siddm_lab", "seed": m["seed"], "iterations": m["global_step"], "K": K, **src})
    return rows


def table(rows):
    lines = ["| iterations | K | metric | siddm_lab (mean ± std, n) | released script (mean ± std, n) | difference "
             "| 2 SE | agree |", "|---" * 8 + "|"]
    keys = sorted({(r["iterations"], r["K"]) for r in rows})
    verdicts = []
    for it, K in keys:
        for metric in METRICS:
            a = [r[metric] for r in rows if r["source"] == "siddm_lab" and (r["iterations"], r["K"]) == (it, K)]
            b = [r[metric] for r in rows if r["source"] == "peer" and (r["iterations"], r["K"]) == (it, K)]
            if len(a) < 2 or len(b) < 2:
                continue
            diff = statistics.mean(a) - statistics.mean(b)
            se2 = 2 * math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
            ok = abs(diff) <= se2
            verdicts.append(ok)
            lines.append(f"| {it} | {K} | {metric} | {statistics.mean(a):.4g} ± {statistics.stdev(a):.2g} ({len(a)}) "
                         f"| {statistics.mean(b):.4g} ± {statistics.stdev(b):.2g} ({len(b)}) | {diff:+.3g} | {se2:.3g} "
                         f"| {'yes' if ok else 'no'} |")
    return "\n".join(lines) + "\n", verdicts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ours", nargs="+", required=True, help="siddm-train run folders (ensembles or single runs)")
    ap.add_argument("--peer", nargs="+", required=True, help="peer run folders T<T>_e<epochs>_s<seed>")
    ap.add_argument("--out", default=str(Path(__file__).parent))
    args = ap.parse_args(argv)
    dm = datamodule()
    rows = our_rows(args.ours) + peer_rows(args.peer, dm)
    out = Path(args.out)
    with open(out / "peer_vs_ours.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    md, verdicts = table(rows)
    (out / "peer_vs_ours.md").write_text(md + f"\n{sum(verdicts)} of {len(verdicts)} comparisons agree within 2 SE.\n")
    print(md)
    print(f"{sum(verdicts)} of {len(verdicts)} comparisons agree within 2 SE")


if __name__ == "__main__":
    main()
