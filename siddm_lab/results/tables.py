"""Markdown tables of a sweep's rows: pivots and listings of mean ± std over repeats (e.g. seeds), the
published numbers beside ours, and the comparison with a baseline row (speed-up, reached quality)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import yaml

from siddm_lab.errors import ConfigError, DataError
from siddm_lab.results.jobs import _num


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
    # the sequential depth (solver iterations of a fixed-point sampler) when it is not the NFE
    depth = any("depth" in r and _num(r["depth"]) != _num(r.get("nfe")) for g in groups.values() for r in g)
    head = [row_key, "NFE", *(["depth"] if depth else []), *metrics] + (["paper"] if paper else [])
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for key in sorted(groups, key=_sort_key):
        nfe = sorted({str(r.get("nfe", "")) for r in groups[key]})
        cells = [_cell([float(r[m]) for r in groups[key] if m in r]) for m in metrics]
        if depth:
            cells.insert(0, ", ".join(sorted({str(r.get("depth", "")) for r in groups[key]})))
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
        raise ConfigError(f"--baseline {baseline!r} is not a value of --rows {row_key}; values: "
                          f"{', '.join(sorted(groups))}")

    def mean(key, rs):
        vals = [float(r[key]) for r in rs if key in r and isinstance(_num(r[key]), float)]
        return _mean(vals) if vals else None

    need = ("modes_covered", "hq_ratio", "fd_2d", "sample_seconds")
    base = {k: mean(k, groups[baseline]) for k in need}
    missing = [k for k, v in base.items() if v is None]
    if missing:
        raise DataError(f"the baseline's jobs have no {', '.join(missing)} (toy metrics needed)")
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
        raise ConfigError(f"cannot read the paper numbers {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("values"), dict):
        raise ConfigError(f"{path} must be a mapping with a 'values' mapping (row -> number or row -> col -> "
                          f"number)")
    return data
