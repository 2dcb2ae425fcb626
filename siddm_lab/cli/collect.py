"""``siddm-collect <sweep dir>``: gather the jobs of a multirun into one table and plot.

Reads only each job's files: ``metrics.json`` and ``.hydra/overrides.yaml`` (the swept values).
Writes ``results.csv`` (one row per job) and, with ``--rows/--cols``, ``table.md`` (a pivot of
``--metric``), plus ``<metric>_vs_nfe.png`` grouped by ``--group``. Jobs without metrics.json
(crashed or still running) and unreadable files are listed, never silently dropped.

    siddm-collect runs/multirun/ddim_table1/<date> --rows sampler.eta --cols sampler.steps \\
        --metric fd_mnist_classifier --group sampler.eta
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml


def _overrides(job: Path) -> dict:
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    out = {}
    for item in yaml.safe_load(path.read_text()) or []:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def collect(sweep_dir) -> tuple[list[dict], list[str]]:
    """(rows, problems): one row per job folder (a folder holding .hydra/ or metrics.json)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SystemExit(f"error: {sweep_dir} is not a directory")
    jobs = sorted({p.parent.parent for p in sweep_dir.rglob(".hydra/config.yaml")}
                  | {p.parent for p in sweep_dir.rglob("metrics.json")})
    rows, problems = [], []
    for job in jobs:
        mfile = job / "metrics.json"
        if not mfile.is_file():
            problems.append(f"{job}: no metrics.json (the job crashed, was interrupted or is still running)")
            continue
        try:
            metrics = json.loads(mfile.read_text())
        except (json.JSONDecodeError, OSError) as e:
            problems.append(f"{job}: unreadable metrics.json ({e})")
            continue
        row = {"job": str(job.relative_to(sweep_dir)), **_overrides(job)}
        row.update({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})
        rows.append(row)
    return rows, problems


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _sort_key(v):
    n = _num(v)
    return (0, n, "") if isinstance(n, float) else (1, 0.0, str(v))


def pivot(rows: list[dict], row_key: str, col_key: str, metric: str) -> str:
    """Markdown table of mean ± std (over repeated cells, e.g. seeds) of ``metric``."""
    cells = defaultdict(list)
    for r in rows:
        if metric in r and row_key in r and col_key in r:
            cells[(str(r[row_key]), str(r[col_key]))].append(float(r[metric]))
    rs = sorted({k[0] for k in cells}, key=_sort_key)
    cs = sorted({k[1] for k in cells}, key=_sort_key)
    lines = [f"| {row_key} \\ {col_key} | " + " | ".join(cs) + " |", "|---" * (len(cs) + 1) + "|"]
    for r in rs:
        vals = []
        for c in cs:
            v = cells.get((r, c))
            if not v:
                vals.append("—")
            elif len(v) == 1:
                vals.append(f"{v[0]:.4g}")
            else:
                vals.append(f"{statistics.mean(v):.4g} ± {statistics.stdev(v):.2g}")
        lines.append(f"| {r} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def listing(rows: list[dict], row_key: str, metric: str) -> str:
    """Markdown table with one line per value of ``row_key``: NFE and mean ± std of ``metric``."""
    groups = defaultdict(list)
    for r in rows:
        if metric in r and row_key in r:
            groups[str(r[row_key])].append(r)
    lines = [f"| {row_key} | NFE | {metric} |", "|---|---|---|"]
    for key in sorted(groups, key=_sort_key):
        vals = [float(r[metric]) for r in groups[key]]
        nfe = sorted({str(r.get("nfe", "")) for r in groups[key]})
        cell = f"{vals[0]:.4g}" if len(vals) == 1 else f"{statistics.mean(vals):.4g} ± {statistics.stdev(vals):.2g}"
        lines.append(f"| {key} | {', '.join(nfe)} | {cell} |")
    return "\n".join(lines) + "\n"


def plot_vs_nfe(rows: list[dict], metric: str, group: str | None, path: Path, title: str = "") -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = defaultdict(list)
    for r in rows:
        if metric in r and "nfe" in r:
            series[str(r.get(group, "")) if group else ""].append((float(r["nfe"]), float(r[metric])))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
    for name in sorted(series, key=_sort_key):
        pts = sorted(series[name])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{group}={name}" if group else None)
    ax.set_xscale("log")
    ax.set_xlabel("NFE (network evaluations)")
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title, fontsize=9)
    if group:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir")
    ap.add_argument("--rows", help="config key for table rows (e.g. sampler.eta)")
    ap.add_argument("--cols", help="config key for table columns (e.g. sampler.steps); without it one line per row")
    ap.add_argument("--metric", default="fd_2d", help="metric in the table and the plot")
    ap.add_argument("--group", help="config key: one line per value in the metric-vs-NFE plot")
    ap.add_argument("--out", help="output folder (default: the sweep folder)")
    args = ap.parse_args(argv)
    rows, problems = collect(args.sweep_dir)
    out = Path(args.out or args.sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    if not rows:
        raise SystemExit(f"error: no job with metrics.json under {args.sweep_dir}")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    if args.rows:
        table = pivot(rows, args.rows, args.cols, args.metric) if args.cols else listing(rows, args.rows, args.metric)
        (out / "table.md").write_text(f"{args.metric}\n\n{table}")
        print(table)
    png = plot_vs_nfe(rows, args.metric, args.group, out / f"{args.metric}_vs_nfe.png")
    print(f"{len(rows)} jobs, {len(problems)} incomplete; wrote {out / 'results.csv'}"
          + (f", {png}" if png else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
