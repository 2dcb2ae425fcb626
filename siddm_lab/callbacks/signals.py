"""Stopping a run on a termination signal (SIGTERM; SIGUSR1 is turned into one): every rank at the same
iteration, with an on-exception checkpoint, and within a bounded time.

Lightning's own SIGTERM handler runs a collective (a broadcast from rank 0) inside the signal handler
and forwards the signal to the ranks it started, which then broadcast too. A collective started at an
arbitrary moment on one rank is matched against whatever collective the other ranks run next (the
gradient all-reduce, the per-iteration broadcast): depending on the moment the job hangs, before or
after the checkpoint, and further signals are stuck behind it.

Here the handler only records the request. At the start of every training iteration the ranks agree
on it in one small all-reduce (the maximum of their flags), so a signal to any rank, or to all of
them, stops every rank before the same iteration; Lightning then calls the exception hooks and
``ExceptionCheckpoint`` writes ``on_exception.ckpt`` with all ranks together. A watchdog started by the
first signal ends the process (and the ranks it started) if it is still running ``grace_seconds`` later,
so a job never outlives a signal by more than that, whatever it was waiting for.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from siddm_lab.utils.lightning_compat import (
    call_after_signal_handlers,
    rank_processes,
    signal_ranks,
    spawned_rank_processes,
)

log = logging.getLogger("siddm_lab")

EXIT_STATUS = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM
GRACE_SECONDS = 50.0  # SLURM waits 30 s (KillWait) by default between SIGTERM and SIGKILL


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class SignalStop(Callback):
    """Stops training on SIGTERM after the current iteration on every rank at once (see the module).

    ``install()`` puts the handler in place (``siddm_lab.training.fit`` does so before ``Trainer.fit``,
    which covers the start-up of the ranks); it is put back over Lightning's handler when Lightning
    registers its own, and ``restore()`` gives the previous handler back."""

    def __init__(self, grace_seconds: float = GRACE_SECONDS) -> None:
        self.grace_seconds = float(grace_seconds)
        self.requested = False  # this process received a signal, or learnt that another rank did
        self.stopped_at: int | None = None  # the iteration training stopped before
        self._signal_time: float | None = None
        self._previous = None
        self._trainer = None
        self._watchdog: threading.Timer | None = None

    # ------------------------------------------------------------------ the handler
    def install(self, trainer=None) -> None:
        if trainer is not None:
            self._trainer = trainer
            self._wrap_lightning_registration(trainer)
        if not _in_main_thread():
            return
        current = signal.getsignal(signal.SIGTERM)
        if current != self._on_signal:
            if self._previous is None:
                self._previous = current
            signal.signal(signal.SIGTERM, self._on_signal)

    def restore(self) -> None:
        if self._previous is not None and _in_main_thread():
            signal.signal(signal.SIGTERM, self._previous)
        self._previous = None
        if self._watchdog is not None and not self.requested:
            self._watchdog.cancel()

    def _wrap_lightning_registration(self, trainer) -> None:
        """Put this handler back right after Lightning registers its own (at the start of ``fit``), so
        that Lightning's handler is never the one a signal reaches."""
        call_after_signal_handlers(trainer, self.install)  # once per trainer (picklable: a bound method)

    def __getstate__(self) -> dict:  # spawned ranks get a copy without this process's handler and threads
        state = self.__dict__.copy()
        state.update(_previous=None, _watchdog=None, _trainer=None)
        return state

    def cancel(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()

    def _on_signal(self, signum, frame) -> None:
        if self.requested:
            log.warning("termination signal received again: the run is already stopping (at most %.0f s after "
                        "the first)", self.grace_seconds - (time.monotonic() - self._signal_time))
            return
        self.requested = True
        self._signal_time = time.monotonic()
        log.warning("termination signal received: stopping after the current training iteration with a "
                    "checkpoint")
        self._forward_to_spawned_ranks(signum)
        self._watchdog = threading.Timer(self.grace_seconds, self._force_exit)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _forward_to_spawned_ranks(self, signum) -> None:
        """The process that spawned its ranks (``ddp_spawn``) trains nothing itself: they get the signal. Ranks
        started by re-running the command learn of it in the all-reduce instead (a rank still starting up
        would be ended by the signal)."""
        if spawned_rank_processes(self._trainer):
            signal_ranks(self._trainer, signum)

    def _force_exit(self) -> None:
        """The run did not end within ``grace_seconds`` of the signal: end it and the ranks it started."""
        log.error("the run did not stop within %.0f s of the termination signal: ending it without a new "
                  "checkpoint (resume from the newest one with ckpt_path=last)", self.grace_seconds)
        for proc in rank_processes(self._trainer):
            try:
                proc.kill()
            except OSError:
                pass
        for handler in logging.getLogger().handlers + log.handlers:
            try:
                handler.flush()
            except Exception:  # noqa: BLE001 - a closed stream must not keep the process alive
                pass
        os._exit(EXIT_STATUS)

    # ------------------------------------------------------------------ training hooks
    def on_train_start(self, trainer, pl_module) -> None:
        self.install(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._agreed_stop(trainer):
            self.stopped_at = trainer.global_step
            # the status is what a spawned rank (ddp_spawn) exits with, which its parent process then reports
            raise SIGTERMException(EXIT_STATUS)

    def _agreed_stop(self, trainer) -> bool:
        """Whether any rank received a signal: every rank calls this at the start of every iteration."""
        flag = self.requested
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor([1 if flag else 0], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flag = bool(t.item())
        if flag and not self.requested:
            self.requested = True  # another rank's signal: this rank stops with it (its watchdog covers it)
            self._signal_time = time.monotonic()
            self._watchdog = threading.Timer(self.grace_seconds, self._force_exit)
            self._watchdog.daemon = True
            self._watchdog.start()
        return flag


def wait_for_launching_rank(parent_pid: int, timeout: float) -> None:
    """A rank started by rank 0 (which re-ran the command) leaves after rank 0: Lightning's launcher ends
    rank 0 at once (SIGKILL) when one of its ranks exits with a non-zero status, which would cut short
    rank 0's own exit (its message, its status)."""
    deadline = time.monotonic() + timeout
    while os.getppid() == parent_pid and time.monotonic() < deadline:
        time.sleep(0.2)
