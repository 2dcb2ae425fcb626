"""Quality against NFE of every fast sampler of one teacher: the teacher's DDIM at each step count, the
progressive-distilled students of every round, the one-step KD student, SIDDM and DDGAN, mean ± std over seeds.

    python experiments/distill_toy/make_table.py --ddim runs/multirun/distill_toy_ddim \
        --pd runs/multirun/distill_toy [more sweeps ...] --kd runs/multirun/distill_toy_kd \
        --siddm runs/multirun/distill_toy_siddm [--ddgan <DDGAN sampling jobs>] \
        --out experiments/distill_toy
    python experiments/distill_toy/make_table.py ... --metrics fd_mnist_classifier --out experiments/distill_mnist
    python experiments/distill_toy/make_table.py --previous experiments/distill_mnist/results.csv \
        --siddm <SIDDM sampling jobs> --ddgan <DDGAN sampling jobs> --metrics fd_mnist_classifier --out <folder>

``--previous`` adds the rows of an earlier results.csv (e.g. the distillation table's, whose run folders
are not kept) to the new jobs' rows. A progressive run evaluates each round's student on its own plan at the round's end (history.jsonl: round,
nfe, metrics); every other job's result is its metrics.json (siddm_lab.results.collect). Writes results.csv,
table.md (one table per metric) and <metric>_vs_nfe.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from siddm_lab.results.jobs import collect, read_history, read_results_csv, write_results_csv
from siddm_lab.results.plots import plot_vs_nfe
from siddm_lab.results.tables import pivot

METRICS = ("fd_2d", "modes_covered", "hq_ratio", "mmd_poly2")


def rows_of(args) -> list[dict]:
    rows: list[dict] = []
    for path in args.previous:
        rows += read_results_csv(path)
    for sweep in args.ddim:
        rows += [{**r, "method": "DDIM (teacher)"} for r in collect(sweep)[0]]
    for sweep in args.pd:
        for hist in sorted(Path(sweep).rglob("history.jsonl")):
            rows += [{**r, "method": "progressive distillation", "job": hist.parent.name}
                     for r in read_history(hist.parent)]
    for sweep in args.kd:
        rows += [{**r, "method": "knowledge distillation (1 step)"} for r in collect(sweep)[0]]
    for sweep in args.siddm:
        rows += [{**r, "method": "SIDDM"} for r in collect(sweep)[0]]
    for sweep in args.ddgan:
        rows += [{**r, "method": "DDGAN"} for r in collect(sweep)[0]]
    return [r for r in rows if "nfe" in r]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("ddim", "pd", "kd", "siddm", "ddgan"):
        p.add_argument(f"--{name}", nargs="+", default=[], help=f"sweep folder(s) of the {name} jobs")
    p.add_argument("--previous", nargs="+", default=[], help="results.csv file(s) of earlier tables to include")
    p.add_argument("--metrics", nargs="+", default=list(METRICS), help="the metrics tabulated and plotted")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = rows_of(args)
    keys = ["method", "nfe", "seed", "job", *args.metrics]
    write_results_csv(out / "results.csv", sorted(rows, key=lambda r: (r["method"], -float(r["nfe"]))), keys)
    text = []
    for metric in args.metrics:
        text.append(f"### {metric}\n\n" + pivot(rows, "method", "nfe", metric))
        plot_vs_nfe(rows, metric, "method", out / f"{metric}_vs_nfe.png", title=f"{metric} against NFE")
    (out / "table.md").write_text("\n".join(text))
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
