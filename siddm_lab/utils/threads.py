"""The torch CPU threads of a run (``threads`` in the train / sample / distill configs).

``threads=auto`` (the default) takes ``OMP_NUM_THREADS`` where the environment sets it (SLURM scripts,
and the parallel launcher's workers: joblib gives each its share of the cores), else gives every process
of the run its share of the CPUs this process may run on (``os.sched_getaffinity``: what ``taskset``, a
SLURM allocation or a container grant), i.e. all of them for one process and half each for a
two-process CPU DDP run. Jobs started side by side on the
same CPUs do not know of each other: give each its share (``threads=1`` for two jobs on two cores, or
``taskset -c``). Two jobs that both use every core slow each other down by far more than 2× (OpenMP
threads spin waiting for each other: ``bench/threads.py`` measures it).
"""

from __future__ import annotations

import logging
import os

import torch

from siddm_lab.errors import ConfigError

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _omp_num_threads() -> int | None:
    v = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(v) if v.isdigit() and int(v) > 0 else None


def resolve_threads(threads, local_processes: int = 1) -> int:
    """The thread count ``threads`` stands for: a positive integer as given, or ``auto``: ``OMP_NUM_THREADS``
    if set, else the available CPUs shared among ``local_processes`` processes of the run on this machine
    (at least 1)."""
    if threads is None or threads == "auto":
        return _omp_num_threads() or max(1, available_cpus() // max(1, int(local_processes)))
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads={threads!r} is invalid: expected 'auto' or a positive integer (torch CPU threads "
                          f"per process)")
    return threads


def apply_threads(threads, local_processes: int = 1) -> int:
    """Set torch's intra-op threads from ``threads`` (see ``resolve_threads``); returns the count."""
    n = resolve_threads(threads, local_processes)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    source = "OMP_NUM_THREADS" if threads in (None, "auto") and _omp_num_threads() else \
        f"{available_cpus()} CPUs available, {local_processes} local process(es)"
    log.info("torch CPU threads: %d (threads=%s: %s)", n, threads, source)
    return n


def local_processes(trainer_cfg) -> int:
    """Processes a trainer config starts on this machine that share its CPUs (CPU DDP: ``devices``)."""
    if trainer_cfg is None or trainer_cfg.get("accelerator") != "cpu":
        return 1
    devices = trainer_cfg.get("devices", 1)
    return devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0 else 1
