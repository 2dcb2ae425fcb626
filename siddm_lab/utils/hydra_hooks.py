"""Checks that run in Hydra itself, before a job's code (``conf/hydra/default.yaml``):

- ``SweepCheck``: every job of a sweep is checked as the job itself checks it before any work (its app's
  ``preflight``: the config, and the objects built from it) before the first one runs: a sweep with an
  invalid job runs none and names each invalid job, instead of stopping at it after the jobs before it ran
  and skipping the rest;
- ``OutputDirCheck``: an output folder (``hydra.run.dir`` / ``hydra.sweep.dir``) that is an existing file is
  refused with a message (Hydra would fail with a raw FileExistsError when it creates the folder).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.experimental.callback import Callback

from siddm_lab.utils.entry import USER_ERROR_STATUS


def _refuse(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(USER_ERROR_STATUS)


def _preflight(config_name: str | None):
    """``check(cfg)``: what the app of ``config_name`` checks of a job's config before any work
    (``siddm_lab.training.preflight`` for siddm-train: the config and the objects built from it, each model
    once; ``siddm_lab.sampling.preflight`` for siddm-sample: the config and the sampler against the
    checkpoint's model, each checkpoint loaded once; ``siddm_lab.config.validate`` for the others)."""
    if config_name == "train":
        from siddm_lab.training import preflight

        built: set = set()
        return lambda cfg: preflight(cfg, built)
    if config_name == "sample":
        from siddm_lab.sampling import preflight

        loaded: dict = {}
        return lambda cfg: preflight(cfg, loaded)
    from siddm_lab.config import validate

    return validate


class SweepCheck(Callback):
    """Check every job of a sweep of Hydra's basic sweeper as the job itself would before any work
    (``_preflight``), before the sweep's folder is created and its first job runs. Other sweepers (which
    choose their jobs as they go) are left alone."""

    def on_multirun_start(self, config, config_name=None, **kwargs) -> None:
        sweeper = config.hydra.sweeper
        if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return
        from hydra import compose
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import open_dict

        from siddm_lab.errors import SiddmError

        params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
        overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
        jobs = [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
        swept = {o.get_key_element() for o in overrides if o.is_sweep_override()}
        problems, check = [], _preflight(config_name)
        for num, job in enumerate(jobs):
            try:
                cfg = compose(config_name=config_name, overrides=list(job))
                with open_dict(cfg):
                    if "paths" in cfg and "output_dir" in cfg.paths:  # the job's folder is not known yet
                        cfg.paths.output_dir = str(Path(str(config.hydra.sweep.dir)) / str(num))
                check(cfg)
            except SiddmError as e:
                label = ",".join(o for o in job if o.split("=", 1)[0] in swept) or ",".join(job)
                problems.append(f"job {num} ({label}): {e}")
        if problems:
            _refuse(f"{len(problems)} of the {len(jobs)} jobs of this sweep are invalid, so none was run:\n  "
                    + "\n  ".join(problems))


class OutputDirCheck(Callback):
    """Refuse an output folder that is an existing file, before Hydra tries to create it."""

    @staticmethod
    def _check(key: str, path) -> None:
        p = Path(str(path))
        if p.exists() and not p.is_dir():
            _refuse(f"{key}={p} is an existing file, not a folder: give a new folder (or an earlier run's folder "
                    f"to resume it)")

    def on_run_start(self, config, **kwargs) -> None:
        self._check("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check("hydra.sweep.dir", config.hydra.sweep.dir)
