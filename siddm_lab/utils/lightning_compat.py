"""Every use of Lightning's private internals, in one place (tested with lightning 2.6.6).

The rest of the package calls the functions below and touches no private Lightning name itself, so a
Lightning upgrade that renames or changes one of them fails ``tests/test_lightning_compat.py`` (which pins
the behaviour each function relies on) instead of silently changing a training run. What is touched, and
why:

- ``LightningOptimizer._on_before_step`` / ``_on_after_step`` (``step_without_counting``): in manual
  optimisation the loop injects these hooks to count every ``opt.step()`` in ``global_step``; a GAN that
  steps its discriminator and then its generator would count two per iteration (Lightning issue 17958).
- ``trainer.fit_loop.epoch_loop.batch_progress`` (``consumed_batches``, ``settle_batch_counters``): the
  batch counters (undocumented loop state) say how many training batches this epoch consumed (the data
  loader resumes from there) and are rewritten after an exception inside a batch;
  ``epoch_loop._batches_that_stepped`` (``settle_batch_counters``) is the step the loggers are given.
- ``ModelCheckpoint._last_global_step_saved``, ``_should_skip_saving_checkpoint``,
  ``_save_last_checkpoint``, ``_monitor_candidates`` (``save_last_checkpoint``): ``last.ckpt`` written at
  a step that is not a multiple of ``every_n_train_steps`` (the final one), with Lightning's own rules.
- ``lightning.pytorch.strategies.launchers._SubprocessScriptLauncher`` (DDP whose ranks rank 0 starts by
  re-running the command) and ``_MultiProcessingLauncher`` (``ddp_spawn``), their ``procs`` (the processes
  they started) and ``kill`` (``uses_script_launcher``, ``started_rank_processes``,
  ``spawned_rank_processes``, ``rank_processes``, ``signal_ranks``): which process started which ranks, to
  end them or forward a signal to them.
- ``trainer._signal_connector.register_signal_handlers`` (``call_after_signal_handlers``): Lightning
  installs its own SIGTERM handler at the start of every ``fit``; ``callbacks.signals.SignalStop`` puts its
  handler back right after.
"""

from __future__ import annotations

from collections.abc import Callable

from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher, _SubprocessScriptLauncher

TESTED_LIGHTNING = "2.6.6"


def _do_nothing() -> None:
    return None


# ---------------------------------------------------------------------------------------------- optimizers
def step_without_counting(opt) -> None:
    """``opt.step()`` (a ``LightningOptimizer`` of manual optimisation) without advancing
    ``trainer.global_step``: Lightning counts every optimizer step of manual optimisation, so a model that
    steps two optimizers per batch (a GAN) steps the first with this and ``global_step`` is the number of
    iterations (Lightning issue 17958). The optimizer-step profiler section of that step is skipped too."""
    before, after = opt._on_before_step, opt._on_after_step
    opt._on_before_step = opt._on_after_step = _do_nothing
    try:
        opt.step()
    finally:
        opt._on_before_step, opt._on_after_step = before, after


# ---------------------------------------------------------------------------------------------- loops
def consumed_batches(trainer) -> int:
    """The training batches of the current epoch that this run has fetched and processed, those restored
    from a checkpoint included (0 without a trainer): where a resumed data loader continues."""
    if trainer is None:
        return 0
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def settle_batch_counters(trainer) -> None:
    """Record the last finished iteration in the batch counters (before saving a checkpoint after an
    exception). An exception inside an iteration leaves that batch counted as started ("ready") but not
    completed; Lightning restores a checkpoint's counters by resetting only the epoch's ones, so every later
    validation and periodic checkpoint of the resumed run would come one iteration early. The weights saved
    are those after ``global_step`` iterations (the batch in flight either stepped its optimizer or did not),
    and the counters are made to say so: total and current trackers all equal to the completed batches plus
    the one in flight if it stepped, and the logging step (``_batches_that_stepped``) equal to
    ``global_step``. Counters that differ from ``global_step`` by anything but 0 or 1 are left alone."""
    loop = trainer.fit_loop.epoch_loop
    progress = loop.batch_progress
    done = progress.total.completed
    stepped = trainer.global_step - done
    if stepped not in (0, 1):
        return
    for tracker, base in ((progress.total, done), (progress.current, progress.current.completed)):
        tracker.ready = tracker.started = tracker.processed = tracker.completed = base + stepped
    if stepped:
        loop._batches_that_stepped = trainer.global_step


# ---------------------------------------------------------------------------------------------- checkpoints
def save_last_checkpoint(callback, trainer) -> bool:
    """Have a ``ModelCheckpoint`` write its last checkpoint now, unless it already saved one at this
    ``global_step`` or Lightning would skip saving here (sanity check, ``fast_dev_run``, not fitting).
    Returns whether it wrote one."""
    if callback._last_global_step_saved == trainer.global_step or callback._should_skip_saving_checkpoint(trainer):
        return False
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
    return True


# ---------------------------------------------------------------------------------------------- launchers
def _launcher(trainer):
    return getattr(getattr(trainer, "strategy", None), "launcher", None)


def uses_script_launcher(trainer) -> bool:
    """Whether the trainer's ranks are started by rank 0 re-running the command (DDP's default, ``popen``;
    true on every rank, including those started by SLURM or torchrun, where rank 0 starts none)."""
    return isinstance(_launcher(trainer), _SubprocessScriptLauncher)


def started_rank_processes(trainer) -> list:
    """The ranks this process started by re-running the command (``subprocess.Popen`` objects): non-empty
    only on rank 0 of such a job, once ``fit`` has started them."""
    launcher = _launcher(trainer)
    return list(launcher.procs) if isinstance(launcher, _SubprocessScriptLauncher) else []


def spawned_rank_processes(trainer) -> list:
    """The ranks this process spawned (``ddp_spawn``; ``multiprocessing`` processes, it trains nothing
    itself): non-empty once ``fit`` has spawned them."""
    launcher = _launcher(trainer)
    return list(launcher.procs) if isinstance(launcher, _MultiProcessingLauncher) else []


def rank_processes(trainer) -> list:
    """The processes the trainer's launcher started, whichever launcher it is (empty without a trainer)."""
    return list(getattr(_launcher(trainer), "procs", None) or [])


def signal_ranks(trainer, signum: int) -> None:
    """Send ``signum`` to the processes the trainer's launcher started (the launcher's ``kill``: a spawned
    process already ended is skipped)."""
    launcher = _launcher(trainer)
    if launcher is not None:
        launcher.kill(signum)


# ---------------------------------------------------------------------------------------------- signals
def signal_connector(trainer):
    """The trainer's signal connector (the object whose ``register_signal_handlers`` installs Lightning's
    SIGTERM handler at the start of every ``fit``), None where there is none."""
    return getattr(trainer, "_signal_connector", None)


class _AfterSignalHandlers:
    """``register_signal_handlers`` of one Trainer: Lightning's, then ``then()`` (picklable when ``then``
    is, as the Trainer is for spawned ranks)."""

    def __init__(self, connector, then: Callable[[], None]) -> None:
        self.connector, self.then = connector, then

    def __call__(self) -> None:
        type(self.connector).register_signal_handlers(self.connector)
        self.then()


def call_after_signal_handlers(trainer, then: Callable[[], None]) -> bool:
    """Make every later ``fit`` of ``trainer`` call ``then()`` right after Lightning registers its signal
    handlers (so that a handler ``then`` installs is the one a signal reaches). Once per trainer: returns
    False (and changes nothing) where it was already done, or the trainer has no signal connector."""
    connector = signal_connector(trainer)
    if connector is None or isinstance(connector.__dict__.get("register_signal_handlers"), _AfterSignalHandlers):
        return False
    connector.register_signal_handlers = _AfterSignalHandlers(connector, then)
    return True
