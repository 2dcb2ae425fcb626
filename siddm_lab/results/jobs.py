"""The jobs of a sweep folder, read from their files only: ``metrics.json`` (one per trained model),
``.hydra/overrides.yaml`` (the swept values) and ``history.jsonl`` (the periodic evaluations). Jobs without
metrics.json (crashed or still running) and unreadable or malformed files (not a JSON object, or a value the
table needs as a number that is not one) are reported by path, never silently dropped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from siddm_lab.errors import DataError


def _overrides(job: Path) -> dict:
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    out = {}
    for item in yaml.safe_load(path.read_text()) or []:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def saved_config_value(job: Path, key: str):
    """The value of a dotted config ``key`` that the job ran with, from its saved resolved config (``config.yaml``,
    else Hydra's ``.hydra/config.yaml``); None where the key is absent, not a single value, or unresolved."""
    for path in (Path(job) / "config.yaml", Path(job) / ".hydra" / "config.yaml"):
        if not path.is_file():
            continue
        try:
            node = yaml.safe_load(path.read_text())
        except (OSError, ValueError, yaml.YAMLError):
            continue
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, (dict, list)) and "${" not in str(node):
            return node
    return None


def add_config_keys(rows: list[dict], sweep_dir, keys) -> None:
    """Give each row the config ``keys`` it lacks (keys not overridden on the command line: a run's
    ``task_name``, a recipe's ``model.ema_decay``) from its job's saved config (``saved_config_value``)."""
    for row in rows:
        for key in keys:
            if key not in row:
                value = saved_config_value(Path(sweep_dir) / row["run"], key)
                if value is not None:
                    row[key] = value


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
    object, and the keys in ``numeric`` (those the table and plots read as numbers) must hold numbers or
    null (not measured by this job, e.g. the solver iterations of a sequential sampler: read as missing)."""
    if not isinstance(metrics, dict):
        return f"not a JSON object of metrics (got {_json_kind(metrics)})"
    bad = [f"{k}={metrics[k]!r} is not a number" for k in numeric
           if metrics.get(k) is not None and not _is_number(metrics[k])]
    return "; ".join(bad) or None


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def collect(sweep_dir, numeric=("nfe",)) -> tuple[list[dict], list[str]]:
    """(rows, problems): one row per trained model: a job folder's ``metrics.json``, or each member's
    ``seed_<s>/metrics.json`` in the folder of an ensemble job (its overrides are the job's, its seed the
    member's). Jobs without results, and missing members, are problems; so are unreadable or malformed
    metrics files (``numeric``: the metrics that must be numbers), whose jobs are skipped: one job of a
    sweep that wrote garbage must not stop the others from being tabulated."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise DataError(f"{sweep_dir} is not a directory")
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
        row.update({k: v for k, v in metrics.items() if v is not None and not isinstance(v, (dict, list))})
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


def _cell(v: str):
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def read_results_csv(path, drop=()) -> list[dict]:
    """The rows of a results table written earlier (``results.csv`` of ``siddm-collect`` or of an experiment's
    ``make_table.py``), to set beside new jobs whose run folders are gone: cells as int, float or text, empty cells
    left out, rows whose ``method`` is in ``drop`` skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such results file (expected a results.csv written by siddm-collect or make_table)")
    with open(path, newline="") as f:
        return [{k: _cell(v) for k, v in r.items() if k is not None and v not in ("", None)}
                for r in csv.DictReader(f) if r.get("method") not in set(drop)]


def write_results_csv(path, rows: list[dict], keys: list[str]) -> None:
    """``rows`` as a CSV with the columns ``keys`` (other keys of a row are left out, missing ones empty)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
