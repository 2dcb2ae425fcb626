"""What the entry points share around a job: a user error (bad config, data, checkpoint, NaN loss) as one
line on stderr and exit status 2, and the value a job returns to Hydra."""

from __future__ import annotations

import functools
import sys
from typing import NoReturn

from hydra.errors import InstantiationException

from siddm_lab.errors import SiddmError
from siddm_lab.utils.loggers import log
from siddm_lab.utils.run_files import JobFiles

USER_ERROR_STATUS = 2  # as argparse's usage errors; 1 stays for crashes (tracebacks)


def _job_prefix() -> str:
    """``job N (overrides): `` for a job of a sweep, which the message then names."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            job = HydraConfig.get().job
            return f"job {job.num} ({job.override_dirname or 'no overrides'}): "
    except Exception:  # noqa: BLE001 - only a prefix
        pass
    return ""


def _exit_user_error(e: SiddmError) -> NoReturn:
    e = f"{_job_prefix()}{e}"
    log.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    # SystemExit(message) would exit with status 1, the status of a crash: scripts and sweeps tell a
    # bad input from a bug by the status.
    raise SystemExit(USER_ERROR_STATUS)


def optimized_value(cfg, metrics: dict):
    """What a job returns to Hydra (and to a sweeper that optimises): its ``optimized_metric``, if set."""
    key = cfg.get("optimized_metric")
    return metrics.get(key) if key else None


def user_errors(fn):
    """Turn the framework's own errors (bad config, data, checkpoint, NaN loss) into a one-line
    message on stderr and exit status 2 instead of a traceback. The job's `.hydra/` files and log are
    written into its folder only once the job accepts the folder (``siddm_lab.utils.run_files``)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with JobFiles(args[0] if args else None):
            try:
                return fn(*args, **kwargs)
            except InstantiationException as e:
                cause = e.__cause__
                while cause is not None and not isinstance(cause, SiddmError):
                    cause = cause.__cause__
                if cause is None:
                    raise
                _exit_user_error(cause)
            except SiddmError as e:
                _exit_user_error(e)

    return wrapper
