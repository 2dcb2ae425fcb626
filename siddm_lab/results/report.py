"""The report of a sweep (what ``siddm-collect`` writes): ``results.csv`` (one row per model), with a row key
``table.md`` (a pivot or listing of the metrics, the paper's numbers, the baseline comparison), and the plots
(metric vs NFE, ablation bars, time-to-quality curves, side-by-side scatter plots)."""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

from siddm_lab.errors import ConfigError, DataError
from siddm_lab.results.jobs import add_config_keys, collect
from siddm_lab.results.plots import check_log_axis, plot_bars, plot_curves, plot_scatter, plot_vs_nfe
from siddm_lab.results.tables import baseline_comparison, listing, load_paper, pivot

# What the baseline comparison and the scatter titles read as numbers (see ``collect``'s ``numeric``).
BASELINE_METRICS = ("modes_covered", "hq_ratio", "fd_2d", "sample_seconds")


@dataclass
class SweepReport:
    """The rows (one per model), the problems (incomplete or malformed jobs) and the files written."""

    rows: list[dict]
    problems: list[str]
    written: list[Path] = field(default_factory=list)


def write_report(sweep_dir, out=None, *, row_key: str | None = None, col_key: str | None = None,
                 metrics: list[str] | None = None, group: str | None = None, paper=None, baseline: str | None = None,
                 bars: bool = False, scatter: bool = False, curves: list[str] = (),
                 log_y: bool = False) -> SweepReport:
    """Tabulate and plot the jobs of ``sweep_dir`` into ``out`` (default: the sweep folder); the problems
    (incomplete or malformed jobs) are printed as warnings, the table to stdout. ``metrics``: the table's
    metrics (default fd_2d; named ones must exist); ``group``: one line per value in the plots (default
    ``row_key`` for the curves); ``paper``: a YAML file of published numbers (``load_paper``); ``log_y``: the
    metric-vs-NFE plot on a log metric axis.
    A ``ConfigError`` names a key, metric or baseline that the jobs lack, a ``DataError`` a sweep without
    usable jobs."""
    given, sweep_dir = sweep_dir, Path(sweep_dir)
    named = metrics is not None
    metrics = list(metrics) if named else ["fd_2d"]
    numeric = [*metrics, "nfe", *(BASELINE_METRICS if baseline else ()), *(("sample_seconds",) if scatter else ())]
    rows, problems = collect(sweep_dir, numeric=numeric)
    out = Path(out or sweep_dir)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    if not rows:
        raise DataError(f"no job with a usable metrics.json under {given}"
                        + (" (see the warnings above)" if problems else ""))
    # a row key that no command line set (a single run's task_name) comes from the jobs' saved configs
    add_config_keys(rows, sweep_dir, [p for k in (row_key, col_key, group) for p in (k or "").split(",") if p])
    keys = list(dict.fromkeys(k for r in rows for k in r))
    csv_rows = [dict(r) for r in rows]  # as collected (before combined keys are added)
    for flag, key in (("--rows", row_key), ("--cols", col_key), ("--group", group)):
        for part in (key or "").split(","):
            if part and part not in keys:
                raise ConfigError(f"{flag} {part}: no job has this config key; keys of these jobs: {', '.join(keys)}")
        if key and "," in key:  # several keys: one line (column, group) per combination of their values
            parts = key.split(",")
            for r in rows:
                if all(p in r for p in parts):
                    r[key] = ", ".join(str(r[p]) for p in parts)
    unknown = [m for m in metrics if m not in keys] if named else []
    if unknown:
        raise ConfigError(f"--metric {', '.join(unknown)}: no job has this metric; keys of these jobs: "
                          f"{', '.join(keys)}")
    if col_key and len(metrics) != 1:
        raise ConfigError("--metric takes one metric with --cols (a pivot table); got " + ",".join(metrics))
    paper = load_paper(paper) if paper else None
    if log_y:
        check_log_axis(rows, metrics[0])
    # every check has passed: only now is anything written (a failed collect leaves --out as it was)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(csv_rows)
    report = SweepReport(rows, problems, [out / "results.csv"])
    if row_key:
        values = paper["values"] if paper else None
        table = (pivot(rows, row_key, col_key, metrics[0], values) if col_key
                 else listing(rows, row_key, metrics, values))
        head = ", ".join(metrics) + (" — ours (paper)" if paper and col_key else "")
        notes = "".join(f"\n{k}: {paper[k]}" for k in ("metric", "source", "note") if paper and paper.get(k))
        if baseline:
            table += "\n" + baseline_comparison(rows, row_key, baseline)
        (out / "table.md").write_text(f"{head}\n\n{table}{notes}\n")
        print(table + notes)
        report.written.append(out / "table.md")
    png = plot_vs_nfe(rows, metrics[0], group, out / f"{metrics[0]}_vs_nfe.png", log_y=log_y)
    if png:
        report.written.append(png)
    if bars and row_key:
        png = plot_bars(rows, row_key, metrics[0], out / f"{metrics[0]}_bars.png",
                        paper["values"] if paper and not col_key else None)
        if png:
            report.written.append(png)
    for curve_metric in curves:
        png = plot_curves(rows, sweep_dir, curve_metric, group or row_key, out / f"{curve_metric}_vs_iterations.png",
                          log_y=log_y)
        if png is None:
            print(f"warning: no history.jsonl holds {curve_metric} (periodic evaluation off?)", file=sys.stderr)
        else:
            report.written.append(png)
    if scatter:
        png = plot_scatter(rows, sweep_dir, [k for k in (row_key, col_key) if k] or ["job"],
                           out / "samples_side_by_side.png")
        if png is None:
            print("warning: --scatter needs jobs with samples.npz of 2-D points or of images (all alike)",
                  file=sys.stderr)
        else:
            report.written.append(png)
    print(f"{len(rows)} jobs, {len(problems)} incomplete; wrote " + ", ".join(str(p) for p in report.written))
    return report


def log_to_wandb(report: SweepReport, sweep_dir, out, group: str | None = None, config: dict | None = None) -> None:
    """One W&B run (job_type=collect) with the rows as a table and the plots; ``group`` defaults to the
    sweep's name, i.e. the folder above the dated sweep folder."""
    from siddm_lab.utils.loggers import wandb_log_job

    sweep = Path(sweep_dir).resolve()
    wandb_log_job(job_type="collect", group=group or sweep.parent.name, name=f"collect {sweep.name}",
                  tags=["collect"], config=config or {},
                  metrics={"jobs": len(report.rows), "incomplete": len(report.problems)},
                  images=[p for p in report.written if p.suffix == ".png"], out_dir=Path(out), table=report.rows)
