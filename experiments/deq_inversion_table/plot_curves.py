"""Loss vs wall time of each job of a deq_inversion_table sweep (the seed report's Figure 1 axes).

    python experiments/deq_inversion_table/plot_curves.py runs/multirun/deq_inversion_table/<date> OUT.png

Each job's metrics.json holds ``loss_curve`` (mean loss over the images per Adam step) and ``invert_seconds``;
the time axis spreads the job's wall time evenly over its steps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(sweep: str, out: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for f in sorted(Path(sweep).glob("*/metrics.json")):
        m = json.loads(f.read_text())
        curve = m["loss_curve"]
        dt = m["invert_seconds"] / m["num_inverted"] / len(curve)
        best = [min(curve[: i + 1]) for i in range(len(curve))]
        style = "-" if m["invert_method"] == "backprop" else "--"
        ax.plot([dt * (i + 1) for i in range(len(best))], best, style,
                label=f"{m['invert_method']} S={m['steps']}")
    ax.set_xlabel("seconds per image")
    ax.set_ylabel("lowest mean loss so far (MSE per pixel)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
