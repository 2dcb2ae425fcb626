"""Files a run writes into its output folder: metrics as JSON (atomically, non-finite numbers as strings)
and the resolved config."""

from __future__ import annotations

import json
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def _jsonable(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def write_json(path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: _jsonable(v) for k, v in data.items()}, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def write_resolved_config(cfg: DictConfig, out_dir) -> Path:
    path = Path(out_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path
