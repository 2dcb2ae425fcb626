"""Checkpoints every N iterations and at the last one; a checkpoint when a run crashes or is stopped."""

from __future__ import annotations

import logging
import signal

import torch
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from siddm_lab.utils.lightning_compat import (
    save_last_checkpoint,
    settle_batch_counters,
    signal_ranks,
    started_rank_processes,
)

log = logging.getLogger(__name__)


class PeriodicCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (every ``every_n_train_steps`` iterations, ``last.ckpt``) that also
    writes ``last.ckpt`` at the final iteration (``trainer.max_steps``) when it is not a multiple of the
    period: a finished run's last checkpoint then holds its final weights, EMA and optimizer states
    (written inside the training loop, before the weight average is copied into the model)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        if self.save_last and trainer.max_steps is not None and step == trainer.max_steps:
            save_last_checkpoint(self, trainer)


class ExceptionCheckpoint(OnExceptionCheckpoint):
    """Lightning's ``OnExceptionCheckpoint`` (``on_exception.ckpt`` when a run crashes or is stopped),
    written only where it holds progress and cannot hang the job:

    - not before this run has completed a training iteration: the state is then the untrained (or
      the just restored) one, which a later ``ckpt_path=last`` would take for the newest progress;
    - with several processes, only when the run was stopped by SIGTERM/SIGUSR1. A checkpoint is saved
      by all ranks together (a barrier), and Lightning stops every rank at the same step for a
      signal. Any other exception is one rank's own while the other ranks wait for it in a
      collective (the gradient all-reduce), so saving would wait forever: the rank logs its error
      and saves nothing (``last.ckpt`` holds the newest progress). Rank 0 of a job whose other ranks
      it started itself (by re-running the command) ends them, as they cannot leave the collective;
      when another rank fails, Lightning's launcher ends rank 0 once that rank has exited. Spawned
      ranks (``ddp_spawn``) call no exception hooks; the process that spawned them gets the failure
      and writes nothing (its model is the untrained one).
    """

    def __init__(self, dirpath, filename: str = "on_exception") -> None:
        super().__init__(dirpath, filename)
        self._trained = False
        self.saved: str | None = None  # the checkpoint written by this run, if any

    def setup(self, trainer, pl_module, stage) -> None:
        self._trained = False
        self.saved = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._trained = True

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        stopping = any(getattr(c, "requested", False) for c in trainer.callbacks if type(c).__name__ == "SignalStop")
        if stopping and not isinstance(exception, SIGTERMException):  # ranks spawned by this process stopped
            log.info("the spawned ranks stopped on the signal; they write no on_exception.ckpt (the newest checkpoint "
                     "is %s/last.ckpt)", self.dirpath)
            return
        if trainer.world_size > 1 and not isinstance(exception, SIGTERMException):
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                who = f"rank {trainer.global_rank} failed at step {trainer.global_step} " \
                      f"({type(exception).__name__}: {exception})"
            else:  # the process that spawned the ranks: the exception carries the failed rank's traceback
                who = f"a rank failed ({(str(exception).strip().splitlines() or [type(exception).__name__])[-1]})"
            log.error("%s; no on_exception.ckpt: under DDP a checkpoint is saved by all ranks together, which "
                      "they cannot do once one has failed (the newest checkpoint is %s/last.ckpt)", who,
                      self.dirpath)
            self._end_started_ranks(trainer)
            return
        if not self._trained:
            log.info("no training iteration completed: no on_exception.ckpt (nothing to resume from)")
            return
        settle_batch_counters(trainer)  # the counters say global_step iterations finished
        # the whole state (optimizers, loops, callbacks): said explicitly, as Lightning otherwise logs that
        # `weights_only` "was not set, defaulting to False", which reads like an unsafe load
        trainer.save_checkpoint(self.ckpt_path, weights_only=False)
        self.saved = self.ckpt_path

    @staticmethod
    def _end_started_ranks(trainer) -> None:
        procs = started_rank_processes(trainer)
        if procs:
            log.error("ending the %d other ranks started by this process", len(procs))
            # SIGKILL: a rank blocked in a collective never runs a Python signal handler
            signal_ranks(trainer, signal.SIGKILL)
