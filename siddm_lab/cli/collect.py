"""``siddm-collect <sweep dir>``: gather the jobs of a multirun into one table and plot.

Reads only each job's files: ``metrics.json`` and ``.hydra/overrides.yaml`` (the swept values).
Writes ``results.csv`` (one row per job) and, with ``--rows/--cols``, ``table.md`` (a pivot of
``--metric``), plus ``<metric>_vs_nfe.png`` grouped by ``--group``. Jobs without metrics.json
(crashed or still running) and unreadable or malformed files (not a JSON object, or a value the table needs
as a number that is not one) are listed by path, never silently dropped.

    siddm-collect runs/multirun/ddim_table1/<date> --rows sampler.eta --cols sampler.steps \\
        --metric fd_mnist_classifier --group sampler.eta
"""

from __future__ import annotations

import argparse
import csv
import json
import math
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


def _job_of(folder: Path, root: Path) -> Path:
    """The job folder a result folder belongs to: itself, or the nearest folder above it (inside the sweep)
    holding Hydra's ``.hydra/`` (an ensemble writes one ``seed_<s>/`` folder per member)."""
    for p in (folder, *folder.parents):
        if (p / ".hydra").is_dir():
            return p
        if p == root:
            break
    return folder


def _ensemble_seeds(job: Path) -> list | None:
    for cfg_file in (job / "config.yaml", job / ".hydra" / "config.yaml"):
        if cfg_file.is_file():
            try:
                seeds = (yaml.safe_load(cfg_file.read_text()) or {}).get("seeds")
            except yaml.YAMLError:
                return None
            return list(seeds) if isinstance(seeds, list) else None
    return None


def _is_number(v) -> bool:
    """A metric value usable as a number: a JSON number, or a numeric string such as the "nan" / "inf"
    that ``write_json`` writes for a diverged run (JSON has no non-finite numbers)."""
    if isinstance(v, bool):
        return False
    return isinstance(v, (int, float)) or (isinstance(v, str) and isinstance(_num(v), float))


def _json_kind(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number")


def _malformed(metrics, numeric) -> str | None:
    """What is wrong with the content of a metrics.json (None when it is usable): it must be a JSON
    object, and the keys in ``numeric`` (those the table and plots read as numbers) must hold numbers."""
    if not isinstance(metrics, dict):
        return f"not a JSON object of metrics (got {_json_kind(metrics)})"
    bad = [f"{k}={metrics[k]!r} is not a number" for k in numeric if k in metrics and not _is_number(metrics[k])]
    return "; ".join(bad) or None


def collect(sweep_dir, numeric=("nfe",)) -> tuple[list[dict], list[str]]:
    """(rows, problems): one row per trained model: a job folder's ``metrics.json``, or each member's
    ``seed_<s>/metrics.json`` in the folder of an ensemble job (its overrides are the job's, its seed the
    member's). Jobs without results, and missing members, are problems; so are unreadable or malformed
    metrics files (``numeric``: the metrics that must be numbers), whose jobs are skipped: one job of a
    sweep that wrote garbage must not stop the others from being tabulated."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SystemExit(f"error: {sweep_dir} is not a directory")
    result_dirs = sorted({p.parent for p in sweep_dir.rglob("metrics.json")})
    jobs = sorted({p.parent.parent for p in sweep_dir.rglob(".hydra/config.yaml")})
    rows, problems = [], []
    found: dict[Path, list] = {}
    for folder in result_dirs:
        job = _job_of(folder, sweep_dir)
        mfile = folder / "metrics.json"
        found.setdefault(job, [])
        try:
            metrics = json.loads(mfile.read_text())
        except (OSError, ValueError) as e:  # ValueError: bad JSON, or bytes that are not UTF-8
            problems.append(f"{mfile}: unreadable ({e}); job skipped")
            continue
        wrong = _malformed(metrics, numeric)
        if wrong:
            problems.append(f"{mfile}: {wrong}; job skipped")
            continue
        row = {"job": str(folder.relative_to(sweep_dir)), "run": str(job.relative_to(sweep_dir)), **_overrides(job)}
        row.update({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})
        rows.append(row)
        found[job].append(metrics.get("seed"))
    for job in jobs:
        seeds = _ensemble_seeds(job)
        if job not in found:
            problems.append(f"{job}: no metrics.json (the job crashed, was interrupted or is still running)")
        elif seeds:
            missing = [s for s in seeds if s not in found[job]]
            if missing:
                problems.append(f"{job}: no results for the ensemble members with seeds {missing}")
    return rows, problems


def read_history(folder: Path) -> list[dict]:
    """The periodic evaluations of one model (``history.jsonl``: iteration, train_seconds, metrics)."""
    path = Path(folder) / "history.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "iteration" in row:
            out.append(row)
    return out


def plot_curves(rows: list[dict], sweep_dir: Path, metric: str, group: str | None, path: Path,
                title: str = "") -> Path | None:
    """Time-to-quality: ``metric`` against iterations and against training seconds, one line per value of
    ``group`` (the mean over its models, e.g. seeds, with the min-max band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[list[dict]]] = defaultdict(list)
    for r in rows:
        hist = [{k: float(h[k]) for k in ("iteration", "train_seconds", metric)}
                for h in read_history(sweep_dir / r["job"])
                if all(_is_number(h.get(k)) for k in ("iteration", "train_seconds", metric))]
        if hist:
            series[str(r.get(group, "")) if group else r["job"]].append(hist)
    if not series:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for name in sorted(series, key=_sort_key):
        runs = series[name]
        its = sorted({h["iteration"] for run in runs for h in run})
        by_it = [[h[metric] for run in runs for h in run if h["iteration"] == i] for i in its]
        secs = [_mean([h["train_seconds"] for run in runs for h in run if h["iteration"] == i]) for i in its]
        mean = [_mean(v) for v in by_it]
        label = f"{group}={name}" if group else name
        for ax, x in zip(axes, (its, secs)):
            line, = ax.plot(x, mean, "o-", ms=3, label=f"{label} (n={len(runs)})")
            if len(runs) > 1:
                ax.fill_between(x, [min(v) for v in by_it], [max(v) for v in by_it], color=line.get_color(), alpha=0.15)
    axes[0].set_xlabel("iterations")
    axes[1].set_xlabel("training seconds (evaluations excluded)")
    for ax in axes:
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _sort_key(v):
    n = _num(v)
    return (0, n, "") if isinstance(n, float) else (1, 0.0, str(v))


def pivot(rows: list[dict], row_key: str, col_key: str, metric: str, paper: dict | None = None) -> str:
    """Markdown table of mean ± std (over repeated cells, e.g. seeds) of ``metric``; with ``paper``
    ({row: {col: value}}) each cell reads ``ours (paper)``."""
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
            cell = _cell(cells.get((r, c), []))
            if paper:
                cell += f" ({_fmt_paper(_lookup(_lookup(paper, r) or {}, c))})"
            vals.append(cell)
        lines.append(f"| {r} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def _mean(vals: list[float]) -> float:
    return math.fsum(vals) / len(vals)


def _std(vals: list[float]) -> float:
    """Sample standard deviation; NaN (not an exception, as ``statistics.stdev`` gives) when a diverged
    run's NaN is among the values."""
    m = _mean(vals)
    return math.sqrt(math.fsum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0


def _cell(vals: list[float]) -> str:
    if not vals:
        return "—"
    return f"{vals[0]:.4g}" if len(vals) == 1 else f"{_mean(vals):.4g} ± {_std(vals):.2g}"


def listing(rows: list[dict], row_key: str, metric: str | list[str], paper: dict | None = None) -> str:
    """Markdown table with one line per value of ``row_key``: NFE, then mean ± std (over repeats,
    e.g. seeds) of each metric; ``paper`` ({row: value}) adds a column with the published number."""
    metrics = [metric] if isinstance(metric, str) else list(metric)
    groups = defaultdict(list)
    for r in rows:
        if row_key in r and any(m in r for m in metrics):
            groups[str(r[row_key])].append(r)
    head = [row_key, "NFE", *metrics] + (["paper"] if paper else [])
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for key in sorted(groups, key=_sort_key):
        nfe = sorted({str(r.get("nfe", "")) for r in groups[key]})
        cells = [_cell([float(r[m]) for r in groups[key] if m in r]) for m in metrics]
        if paper:
            cells.append(_fmt_paper(_lookup(paper, key)))
        lines.append(f"| {key} | {', '.join(nfe)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# "Reaches the baseline's quality" (toy data): modes within one of the baseline's, HQ at least 90 % of it,
# 2-D FD at most twice it.
QUALITY_RULE = "modes >= baseline - 1, hq_ratio >= 0.9 x baseline, fd_2d <= 2 x baseline"


def reaches_quality(m: dict, base: dict) -> bool:
    """``QUALITY_RULE``: does the toy metrics dict ``m`` reach those of ``base``?"""
    return bool(m["modes_covered"] >= base["modes_covered"] - 1 and m["hq_ratio"] >= 0.9 * base["hq_ratio"]
                and m["fd_2d"] <= 2 * base["fd_2d"])


def baseline_comparison(rows: list[dict], row_key: str, baseline: str) -> str:
    """Markdown table: each value of ``row_key`` against the ``baseline`` value (means over repeats):
    the sampling speed-up (baseline sample_seconds / the row's) and whether it reaches the baseline's
    quality (``QUALITY_RULE``)."""
    groups = defaultdict(list)
    for r in rows:
        if row_key in r:
            groups[str(r[row_key])].append(r)
    if baseline not in groups:
        raise SystemExit(f"error: --baseline {baseline!r} is not a value of --rows {row_key}; values: "
                         f"{', '.join(sorted(groups))}")

    def mean(key, rs):
        vals = [float(r[key]) for r in rs if key in r and isinstance(_num(r[key]), float)]
        return _mean(vals) if vals else None

    need = ("modes_covered", "hq_ratio", "fd_2d", "sample_seconds")
    base = {k: mean(k, groups[baseline]) for k in need}
    missing = [k for k, v in base.items() if v is None]
    if missing:
        raise SystemExit(f"error: the baseline's jobs have no {', '.join(missing)} (toy metrics needed)")
    lines = [f"| {row_key} | NFE | modes | HQ | FD | sampling s | speed-up vs {baseline} "
             f"| reaches {baseline} quality |",
             "|---" * 8 + "|"]
    for key in sorted(groups, key=_sort_key):
        m = {k: mean(k, groups[key]) for k in need}
        if None in m.values():
            continue
        ok = reaches_quality(m, base)
        nfe = ", ".join(sorted({str(r.get("nfe", "")) for r in groups[key]}))
        verdict = "(baseline)" if key == baseline else ("yes" if ok else "no")
        lines.append(f"| {key} | {nfe} | {m['modes_covered']:.3g} | {m['hq_ratio']:.3f} | {m['fd_2d']:.3g} | "
                     f"{m['sample_seconds']:.3g} | {base['sample_seconds'] / m['sample_seconds']:.0f}x | {verdict} |")
    return "\n".join(lines) + f"\n\nquality rule: {QUALITY_RULE}\n"


def _lookup(table: dict, key: str):
    """A paper value by row (or column) label, matching numbers loosely (4 == 4.0)."""
    if not isinstance(table, dict):
        return None
    for k, v in table.items():
        if str(k) == key or (_num(k) == _num(key) and isinstance(_num(key), float)):
            return v
    return None


def _fmt_paper(v) -> str:
    return "—" if v is None else (f"{v:.4g}" if isinstance(v, (int, float)) else str(v))


def load_paper(path) -> dict:
    """Published numbers to print beside ours: a YAML file with ``metric`` (what the paper reports),
    optional ``source`` / ``note``, and ``values``: {row: {col: number}} for pivots or {row: number}
    for listings. Row/column labels are the swept values (e.g. ``siddm`` and ``4``)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SystemExit(f"error: cannot read the paper numbers {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("values"), dict):
        raise SystemExit(f"error: {path} must be a mapping with a 'values' mapping (row -> number or row -> col -> "
                         f"number)")
    return data


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


def plot_bars(rows: list[dict], row_key: str, metric: str, path: Path, paper: dict | None = None,
              title: str = "") -> Path | None:
    """Bar chart (ablations): mean ± std of ``metric`` per value of ``row_key``, with the paper's
    number beside each bar when given ({row: value}, on its own scale: a different dataset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = defaultdict(list)
    for r in rows:
        if metric in r and row_key in r:
            groups[str(r[row_key])].append(float(r[metric]))
    if not groups:
        return None
    names = sorted(groups, key=_sort_key)
    means = [_mean(groups[n]) for n in names]
    stds = [_std(groups[n]) for n in names]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names)), 4), dpi=100)
    x = list(range(len(names)))
    ax.bar(x, means, yerr=stds, capsize=3, color="tab:blue", label=f"ours ({metric})")
    ax.set_ylabel(metric)
    if paper:
        vals = [_lookup(paper, n) for n in names]
        if any(isinstance(v, (int, float)) for v in vals):
            ax2 = ax.twinx()
            ax2.plot(x, [v if isinstance(v, (int, float)) else float("nan") for v in vals], "o", color="tab:red",
                     label="paper")
            ax2.set_ylabel("paper", color="tab:red")
            ax2.legend(loc="upper right", fontsize=7)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.legend(loc="upper left", fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _toy_reference(job: Path):
    """(reference points, centres) of a toy job's dataset, rebuilt from its resolved config.yaml (in the
    job folder, or the ensemble's folder above a member's)."""
    try:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        cfg_file = next(p / "config.yaml" for p in (job, *job.parents) if (p / "config.yaml").is_file())
        dm = instantiate(OmegaConf.load(cfg_file).dataset)
        centers = getattr(dm.distribution, "centers", None)
        return dm.reference.numpy(), None if centers is None else centers.numpy()
    except Exception:  # noqa: BLE001 - the plot is still useful without the data layer
        return None, None


def plot_scatter(rows: list[dict], sweep_dir: Path, keys: list[str], path: Path,
                 metrics=("modes_covered", "fd_2d")) -> Path | None:
    """Side-by-side scatter plots of 2-D samples: one panel per value of ``keys`` (the first job of each
    group, e.g. seed 0), titled with the values, NFE, sampling time and ``metrics``."""
    import numpy as np

    from siddm_lab.utils import plotting

    groups: dict[tuple, dict] = {}
    for r in sorted(rows, key=lambda r: _sort_key(r.get("seed", 0))):
        groups.setdefault(tuple(str(r.get(k, "")) for k in keys), r)
    panels, reference = [], None
    for label in sorted(groups, key=lambda t: tuple(_sort_key(v) for v in t)):
        r = groups[label]
        job = sweep_dir / r["job"]
        if not (job / "samples.npz").is_file():
            continue
        x = np.load(job / "samples.npz")["samples"]
        if x.ndim != 2 or x.shape[1] != 2:
            return None
        if reference is None:
            reference, _ = _toy_reference(job)
        stats = [f"{m}={_num(r[m]):.3g}" for m in metrics if m in r and isinstance(_num(r[m]), float)]
        if "sample_seconds" in r:
            stats.append(f"{float(r['sample_seconds']):.2g}s")
        title = " ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, label))
        panels.append((f"{title} NFE={r.get('nfe', '?')}\n" + " ".join(stats), x))
    if not panels:
        return None
    ncols = len({label[-1] for label in groups}) if len(keys) > 1 else None  # one row per first-key value
    return plotting.side_by_side(panels, path, reference=reference, ncols=ncols)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir")
    ap.add_argument("--rows", help="config key for table rows (e.g. sampler.eta)")
    ap.add_argument("--cols", help="config key for table columns (e.g. sampler.steps); without it one line per row")
    ap.add_argument("--metric", default=None, help="metric in the table and the plot (default fd_2d); with --rows "
                    "and no --cols a comma-separated list gives one column per metric")
    ap.add_argument("--paper", help="YAML file of published numbers to print beside ours (see load_paper)")
    ap.add_argument("--bars", action="store_true", help="bar chart of the (first) metric per --rows value, with "
                    "the paper's numbers when --paper is given (ablations)")
    ap.add_argument("--scatter", action="store_true", help="side-by-side scatter plots of 2-D samples, one per "
                    "--rows (x --cols) value")
    ap.add_argument("--group", help="config key: one line per value in the metric-vs-NFE plot and the curves "
                    "(default: --rows)")
    ap.add_argument("--curves", help="metrics (comma-separated) to draw against iterations and training seconds "
                    "from each model's history.jsonl (time-to-quality), e.g. hq_ratio,modes_covered")
    ap.add_argument("--baseline", help="a --rows value to compare every row with: sampling speed-up and whether "
                    "it reaches the baseline's quality (toy metrics; " + QUALITY_RULE + ")")
    ap.add_argument("--out", help="output folder (default: the sweep folder)")
    ap.add_argument("--wandb", action="store_true", help="also log the table and plots to W&B (job_type=collect)")
    ap.add_argument("--wandb-group", help="W&B group (default: the sweep's name, i.e. the folder above the "
                    "dated sweep folder)")
    args = ap.parse_args(argv)
    metrics = [m.strip() for m in (args.metric or "fd_2d").split(",") if m.strip()]
    numeric = [*metrics, "nfe", *(("modes_covered", "hq_ratio", "fd_2d", "sample_seconds") if args.baseline else ()),
               *(("sample_seconds",) if args.scatter else ())]
    rows, problems = collect(args.sweep_dir, numeric=numeric)
    out = Path(args.out or args.sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    if not rows:
        raise SystemExit(f"error: no job with a usable metrics.json under {args.sweep_dir}"
                         + (" (see the warnings above)" if problems else ""))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    for flag, key in (("--rows", args.rows), ("--cols", args.cols), ("--group", args.group)):
        if key and key not in keys:
            raise SystemExit(f"error: {flag} {key}: no job has this config key; keys of these jobs: {', '.join(keys)}")
    unknown = [m for m in metrics if m not in keys] if args.metric else []
    if unknown:
        raise SystemExit(f"error: --metric {', '.join(unknown)}: no job has this metric; keys of these jobs: "
                         f"{', '.join(keys)}")
    if args.cols and len(metrics) != 1:
        raise SystemExit("error: --metric takes one metric with --cols (a pivot table); got " + ",".join(metrics))
    paper = load_paper(args.paper) if args.paper else None
    written = [out / "results.csv"]
    if args.rows:
        values = paper["values"] if paper else None
        table = (pivot(rows, args.rows, args.cols, metrics[0], values) if args.cols
                 else listing(rows, args.rows, metrics, values))
        head = ", ".join(metrics) + (" — ours (paper)" if paper and args.cols else "")
        notes = "".join(f"\n{k}: {paper[k]}" for k in ("metric", "source", "note") if paper and paper.get(k))
        if args.baseline:
            comparison = baseline_comparison(rows, args.rows, args.baseline)
            table += "\n" + comparison
        (out / "table.md").write_text(f"{head}\n\n{table}{notes}\n")
        print(table + notes)
        written.append(out / "table.md")
    png = plot_vs_nfe(rows, metrics[0], args.group, out / f"{metrics[0]}_vs_nfe.png")
    if png:
        written.append(png)
    if args.bars and args.rows:
        bars = plot_bars(rows, args.rows, metrics[0], out / f"{metrics[0]}_bars.png",
                         paper["values"] if paper and not args.cols else None)
        if bars:
            written.append(bars)
    for curve_metric in [m.strip() for m in (args.curves or "").split(",") if m.strip()]:
        png = plot_curves(rows, Path(args.sweep_dir), curve_metric, args.group or args.rows,
                          out / f"{curve_metric}_vs_iterations.png")
        if png is None:
            print(f"warning: no history.jsonl holds {curve_metric} (periodic evaluation off?)", file=sys.stderr)
        else:
            written.append(png)
    if args.scatter:
        keys = [k for k in (args.rows, args.cols) if k]
        sc = plot_scatter(rows, Path(args.sweep_dir), keys or ["job"], out / "samples_side_by_side.png")
        if sc is None:
            print("warning: --scatter needs jobs with 2-D samples.npz", file=sys.stderr)
        else:
            written.append(sc)
    print(f"{len(rows)} jobs, {len(problems)} incomplete; wrote " + ", ".join(str(p) for p in written))
    if args.wandb:
        from siddm_lab.utils.loggers import wandb_log_job

        sweep = Path(args.sweep_dir).resolve()
        wandb_log_job(job_type="collect", group=args.wandb_group or sweep.parent.name, name=f"collect {sweep.name}",
                      tags=["collect"], config=vars(args), metrics={"jobs": len(rows), "incomplete": len(problems)},
                      images=[p for p in written if p.suffix == ".png"], out_dir=out, table=rows)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
