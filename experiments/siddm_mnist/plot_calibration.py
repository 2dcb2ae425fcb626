"""Time-to-quality curves of calibration runs that are still training or were stopped (siddm-collect
--curves draws finished jobs only): fd_mnist_classifier of each run's periodic evaluations (history.jsonl)
against iterations and training seconds, and a table of the evaluations.

    python experiments/siddm_mnist/plot_calibration.py runs/calib_mnist/A_siddm runs/calib_mnist/A_ddgan \
        --out experiments/siddm_mnist/calibration
"""

from __future__ import annotations

import argparse
from pathlib import Path

from siddm_lab.results.jobs import read_history
from siddm_lab.results.plots import plot_curves


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path, help="run folders holding history.jsonl")
    ap.add_argument("--metric", default="fd_mnist_classifier")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [{"job": str(r.resolve()), "run": r.name} for r in args.runs]  # absolute: the root is ignored
    png = plot_curves(rows, Path("/"), args.metric, "run", args.out / f"{args.metric}_vs_iterations.png",
                      title="MNIST calibration", log_y=True)
    extra = ("digit_classes", "digit_tv", "digit_confidence")  # mnist_digits, where the run computed it
    lines = [f"| run | iteration | training s | {args.metric} | sample mean (data -0.74) | " + " | ".join(extra) + " |",
             "|---" * (5 + len(extra)) + "|"]
    for r in args.runs:
        for h in read_history(r):
            cells = " | ".join("" if k not in h else f"{h[k]:.3g}" for k in extra)
            lines.append(f"| {r.name} | {h['iteration']} | {h['train_seconds']:.0f} | {h[args.metric]:.1f} | "
                         f"{h.get('sample_mean', float('nan')):.3f} | {cells} |")
    (args.out / "history.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {png} and {args.out / 'history.md'}")


if __name__ == "__main__":
    main()
