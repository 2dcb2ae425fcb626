"""Files a run writes into its output folder: metrics as JSON (atomically, non-finite numbers as strings)
and the resolved config."""

from __future__ import annotations

import json
import logging
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


# ---------------------------------------------------------------------------------------------------------------
# A job writes into its folder only once it has been accepted there. Hydra writes a job's `.hydra/` files and
# opens its log file before the job's code runs, which would rewrite (or append to) the files of an earlier run
# in the same folder even when the job is then refused. The project's Hydra config therefore sets
# `hydra.output_subdir: null` and logs through `DeferredFileHandler`; the entry points capture the job's files
# (`JobFiles`) and `accept_output_dir` writes them and opens the log once the job's checks have passed.

HYDRA_SUBDIR = ".hydra"


class DeferredFileHandler(logging.FileHandler):
    """Hydra's job log file (``<output dir>/<job name>.log``), written only after ``start_writing()``: records
    before that are kept and written then, or dropped when the job ends without being accepted (a refused
    run leaves an earlier run's log as it was)."""

    MAX_PENDING = 10_000

    def __init__(self, filename, mode: str = "a", encoding=None, delay: bool = True, errors=None) -> None:
        super().__init__(filename, mode, encoding, delay=True, errors=errors)
        self._pending: list[logging.LogRecord] | None = []

    def emit(self, record: logging.LogRecord) -> None:
        if self._pending is None:
            super().emit(record)
        elif len(self._pending) < self.MAX_PENDING:
            self._pending.append(record)

    def start_writing(self) -> None:  # (not `release`: a Handler's lock has that name)
        self.acquire()
        try:
            pending, self._pending = self._pending or [], None
            for record in pending:
                super().emit(record)
        finally:
            self.release()

    def drop(self) -> None:
        if self._pending is not None:
            self._pending = []

    def close(self) -> None:
        self._pending = None  # never accepted: nothing is written
        super().close()


_JOB: JobFiles | None = None


class JobFiles:
    """The `.hydra/` files of the Hydra job being run (its config, Hydra's config, its overrides), kept until
    the job is accepted in its folder (``accept_output_dir``)."""

    def __init__(self, cfg: DictConfig | None) -> None:
        from hydra.core.hydra_config import HydraConfig

        self.files: dict[str, str] = {}
        if isinstance(cfg, DictConfig) and HydraConfig.initialized():
            hydra_cfg = HydraConfig.instance().cfg
            self.files = {"config.yaml": OmegaConf.to_yaml(cfg), "hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
                          "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task)}
        self.accepted = False

    def __enter__(self) -> JobFiles:
        global _JOB
        _JOB = self
        return self

    def __exit__(self, *exc) -> None:
        global _JOB
        _JOB = None
        if not self.accepted:  # the job ended before it was accepted: its log lines are not written
            for h in _deferred_handlers():
                h.drop()


def _deferred_handlers() -> list[DeferredFileHandler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, DeferredFileHandler)]


def accept_output_dir(out_dir, write_hydra_files: bool = True) -> None:
    """The job may write into ``out_dir``: write its `.hydra/` files (``write_hydra_files``: rank 0 of a DDP
    run) and the log lines so far, and log straight to the file from now on."""
    job = _JOB
    if job is not None and not job.accepted:
        job.accepted = True
        if write_hydra_files and job.files:
            sub = Path(out_dir) / HYDRA_SUBDIR
            sub.mkdir(parents=True, exist_ok=True)
            for name, text in job.files.items():
                (sub / name).write_text(text, encoding="utf-8")
    for h in _deferred_handlers():
        h.start_writing()
