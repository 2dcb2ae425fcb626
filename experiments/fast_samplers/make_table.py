"""Quality against NFE of every sampler of one model at equal NFE: the training-free solvers (DDIM, DPM-Solver++,
UniPC, DEIS, Heun) beside the distilled students and the diffusion GANs, mean ± std over sampling seeds.

    python experiments/fast_samplers/make_table.py runs/fast_samplers/mnist \
        --previous experiments/distill_mnist/results.csv --drop "DDIM (teacher)" \
        --label SIDDM-4=experiments/siddm_mnist/runs/siddm_seed0 DDGAN-4=experiments/siddm_mnist/runs/ddgan_seed0 \
        --metrics fd_mnist_classifier --logy --out experiments/fast_samplers/mnist

Every ``siddm-sample`` job under the given folders (one or more multiruns) is one row, labelled from what its
``metrics.json`` records of the sampler that ran (``sampler``, ``order``, ``solver_type``, ``eta``; a generator
chain by its model: SIDDM, DDGAN); ``--label NAME=FOLDER`` labels every job under FOLDER NAME instead (e.g. a
training run's own final evaluation, whose metrics.json does not name the model). ``--previous`` adds the rows of
earlier tables' results.csv (method, nfe, seed, metrics), ``--drop`` leaves methods of those out. Writes
results.csv, table.md (the method × NFE table of each metric, then, per method, its best cell and the NFE from
which it stays within ``--within`` of it or within the seeds' spread (std of the cell + std of the best), and the
best method at each NFE budget of ``--budgets``: each method's best cell with at most that many NFE) and
<metric>_vs_nfe.png.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

from siddm_lab.results.jobs import collect, read_results_csv, write_results_csv
from siddm_lab.results.plots import plot_vs_nfe
from siddm_lab.results.tables import pivot

LOWER_IS_BETTER = {"fd_2d": True, "fd_mnist_classifier": True, "mmd_poly2": True, "fid": True,
                   "modes_covered": False, "hq_ratio": False, "digit_classes": False}


def method_of(row: dict) -> str:
    """The label of the sampler a job ran, from its metrics.json."""
    name = str(row.get("sampler", "?"))
    order = row.get("order")
    if name == "ddim":
        eta = float(row.get("eta", 0.0))
        return "DDIM" if eta == 0 else f"DDIM eta={eta:g}"
    if name == "dpm_solver":
        return f"DPM-Solver++ {order}M"
    if name == "unipc":
        return f"UniPC-{order} ({row.get('solver_type', 'bh2')})"
    if name == "deis":
        return f"DEIS {order}M"
    if name == "heun":
        return "Heun, Karras σ (EDM)" if row.get("subsequence") == "karras" else "Heun (EDM, 2 calls/step)"
    if name == "generator":
        return str(row.get("model", "generator"))
    return name


def rows_of(folders, previous, drop, labels=()) -> tuple[list[dict], list[str]]:
    rows, problems = [], []
    for item in labels:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise SystemExit(f"--label {item!r} is invalid: expected NAME=FOLDER")
        found, wrong = collect(folder)
        problems += wrong
        rows += [{**r, "method": name} for r in found]
    for path in previous:
        rows += read_results_csv(path, drop)
    for folder in folders:
        found, wrong = collect(folder)
        problems += wrong
        rows += [{**r, "method": method_of(r)} for r in found]
    return [r for r in rows if "nfe" in r], problems


def _mean(vals):
    return sum(vals) / len(vals)


def summary(rows: list[dict], metric: str, budgets: list[int], within: float) -> str:
    """Per method: its best mean and the NFE from which every larger NFE stays within ``within`` (relative) of
    it; then, at each NFE budget, the methods ranked by their best mean with at most that many NFE."""
    lower = LOWER_IS_BETTER.get(metric, True)
    better = min if lower else max
    cells = defaultdict(list)
    for r in rows:
        if metric in r and isinstance(r[metric], (int, float)) and math.isfinite(float(r[metric])):
            cells[(r["method"], int(r["nfe"]))].append(float(r[metric]))
    means = defaultdict(dict)  # method -> nfe -> (mean, sample std over seeds: 0 for one seed)
    for (method, nfe), vals in cells.items():
        m = _mean(vals)
        sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        means[method][nfe] = (m, sd)
    lines = [f"#### {metric}: where each method stops improving", "",
             f"| method | best | at NFE | within {within:.0%} or the seeds' spread of its best from NFE |",
             "|---|---|---|---|"]
    for method in sorted(means):
        by_nfe = means[method]
        best_nfe = better(by_nfe, key=lambda n: by_nfe[n][0])
        close = [n for n in sorted(by_nfe) if all(_near(by_nfe[m], by_nfe[best_nfe], within, lower)
                                                  for m in by_nfe if m >= n)]
        best = by_nfe[best_nfe][0]
        lines.append(f"| {method} | {best:.4g} | {best_nfe} | {close[0] if close else '-'} |")
    lines += ["", f"#### {metric}: the best method at each NFE budget (its best cell with NFE <= budget)", "",
              "| budget | ranking (mean over seeds, NFE used) |", "|---|---|"]
    for budget in budgets:
        ranked = []
        for method, by_nfe in means.items():
            ok = [n for n in by_nfe if n <= budget]
            if ok:
                n = better(ok, key=lambda m: by_nfe[m][0])
                ranked.append((by_nfe[n][0], method, n))
        ranked.sort(reverse=not lower)
        lines.append(f"| {budget} | " + "; ".join(f"**{m}** {v:.4g} ({n})" if i == 0 else f"{m} {v:.4g} ({n})"
                                                  for i, (v, m, n) in enumerate(ranked)) + " |")
    return "\n".join(lines) + "\n"


def _near(cell: tuple, best: tuple, within: float, lower: bool) -> bool:
    """A cell (mean, std) no longer distinguishable from the best: within ``within`` (relative) of it, or closer
    than the two cells' seed spreads together."""
    (v, sd), (b, sd_b) = cell, best
    relative = v <= b * (1 + within) if lower else v >= b * (1 - within)
    return relative or abs(v - b) <= sd + sd_b


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="*", help="folders holding siddm-sample jobs (searched recursively)")
    p.add_argument("--previous", nargs="+", default=[], help="results.csv file(s) of earlier tables to include")
    p.add_argument("--label", nargs="+", default=[], metavar="NAME=FOLDER",
                   help="jobs under FOLDER labelled NAME (e.g. SIDDM-4=<a training run's folder>)")
    p.add_argument("--drop", nargs="+", default=[], help="methods of --previous to leave out")
    p.add_argument("--metrics", nargs="+", default=["fd_2d", "modes_covered", "hq_ratio"])
    p.add_argument("--budgets", nargs="+", type=int, default=[4, 8, 20])
    p.add_argument("--within", type=float, default=0.05, help="relative distance to a method's best that counts "
                   "as no longer improving (default 0.05)")
    p.add_argument("--logy", action="store_true", help="log scale for the metric axis")
    p.add_argument("--ylim", nargs=2, type=float, metavar=("LO", "HI"),
                   help="the metric axis of the first metric's plot (cells outside stay in the table)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, problems = rows_of(args.folders, args.previous, set(args.drop), args.label)
    for problem in problems:
        print("warning:", problem)
    if not rows:
        raise SystemExit(f"no results found in {args.folders + args.previous + args.label}")
    keys = ["method", "nfe", "seed", "job", *args.metrics]
    write_results_csv(out / "results.csv", sorted(rows, key=lambda r: (r["method"], float(r["nfe"]), str(r.get("seed")))),
                      keys)
    text = []
    for i, metric in enumerate(args.metrics):
        text.append(f"### {metric} (mean ± std over seeds)\n\n" + pivot(rows, "method", "nfe", metric) + "\n"
                    + summary(rows, metric, args.budgets, args.within))
        plot_vs_nfe(rows, metric, "method", out / f"{metric}_vs_nfe.png", title=f"{metric} against NFE",
                    log_y=args.logy and LOWER_IS_BETTER.get(metric, True),
                    ylim=tuple(args.ylim) if args.ylim and i == 0 else None)
    (out / "table.md").write_text("\n".join(text))
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
