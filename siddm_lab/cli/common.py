"""Glue shared by the entry points: error reporting, loggers, output files."""

from __future__ import annotations

import functools
import json
import logging
import math
import netrc
import os
from pathlib import Path

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from siddm_lab.errors import SiddmError

log = logging.getLogger("siddm_lab")

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def user_errors(fn):
    """Turn the framework's own errors (bad config, data, checkpoint, NaN loss) into a one-line
    message and exit status 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InstantiationException as e:
            cause = e.__cause__
            while cause is not None and not isinstance(cause, SiddmError):
                cause = cause.__cause__
            if cause is None:
                raise
            log.error("%s", cause)
            raise SystemExit(f"error: {cause}") from None
        except SiddmError as e:
            log.error("%s", e)
            raise SystemExit(f"error: {e}") from None

    return wrapper


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def build_loggers(cfg: DictConfig):
    from hydra.utils import instantiate

    lcfg = cfg.get("logger")
    if not lcfg:
        return False
    loggers = []
    for sub in lcfg.values():
        if sub is None or "_target_" not in sub:
            continue
        if "Wandb" in sub["_target_"] and not os.environ.get("WANDB_MODE") and not _has_wandb_credentials():
            log.warning("no W&B credentials found: logging offline (WANDB_MODE=offline); "
                        "sync later with `wandb sync %s`", cfg.paths.output_dir)
            os.environ["WANDB_MODE"] = "offline"
        loggers.append(instantiate(sub))
    return loggers or False


def build_callbacks(cfg: DictConfig, has_logger: bool = True):
    """Instantiate ``cfg.callbacks``; logger-only callbacks are dropped when there is no logger."""
    from hydra.utils import instantiate

    ccfg = cfg.get("callbacks") or {}
    callbacks = []
    for sub in ccfg.values():
        if sub is None or "_target_" not in sub:
            continue
        if not has_logger and sub["_target_"].endswith("LearningRateMonitor"):
            continue
        callbacks.append(instantiate(sub))
    return callbacks


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
