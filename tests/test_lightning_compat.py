"""The Lightning behaviour ``siddm_lab.utils.lightning_compat`` relies on, pinned on the installed Lightning.

Each test fails with a message naming what to fix there if a Lightning upgrade renames, removes or changes
a private attribute the package uses; and no module outside ``lightning_compat`` touches one."""

from __future__ import annotations

import multiprocessing
import pickle
import re
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

from siddm_lab.callbacks.checkpoint import PeriodicCheckpoint
from siddm_lab.utils import lightning_compat as compat
from tests.conftest import ROOT

UPGRADE = f"(pinned on lightning {compat.TESTED_LIGHTNING}, installed {L.__version__}): update " \
          f"siddm_lab/utils/lightning_compat.py"


class _TwoOptimizers(L.LightningModule):
    """A GAN-like module: per batch one step of a first optimizer ("D"), then of a second ("G")."""

    def __init__(self, uncounted: bool = True, fail_at: int | None = None, fail_after_step: bool = True):
        super().__init__()
        self.automatic_optimization = False
        self.d = torch.nn.Linear(2, 1)
        self.g = torch.nn.Linear(2, 1)
        self.uncounted, self.fail_at, self.fail_after_step = uncounted, fail_at, fail_after_step
        self.batches = 0

    def training_step(self, batch, batch_idx):
        opt_d, opt_g = self.optimizers()
        opt_d.zero_grad()
        self.manual_backward(self.d(batch).square().mean())
        if self.uncounted:
            compat.step_without_counting(opt_d)
        else:
            opt_d.step()
        if batch_idx == self.fail_at and not self.fail_after_step:
            raise RuntimeError("failed before the counted step")
        opt_g.zero_grad()
        self.manual_backward(self.g(batch).square().mean())
        opt_g.step()
        self.batches += 1
        if batch_idx == self.fail_at:
            raise RuntimeError("failed after the counted step")

    def configure_optimizers(self):
        return [torch.optim.Adam(self.d.parameters(), lr=1e-2), torch.optim.Adam(self.g.parameters(), lr=1e-2)]

    def train_dataloader(self):
        return DataLoader(torch.randn(64, 2, generator=torch.Generator().manual_seed(0)), batch_size=4)


def _trainer(**kwargs) -> L.Trainer:
    options = dict(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{**options, **kwargs})


def _adam_steps(opt) -> list[int]:
    return [int(s["step"]) for s in opt.state.values()]


# ---------------------------------------------------------------------------------------------- optimizers
def test_step_without_counting_steps_the_optimizer_but_not_global_step():
    model = _TwoOptimizers(uncounted=True)
    d0 = model.d.weight.detach().clone()
    trainer = _trainer()
    trainer.fit(model)
    assert model.batches == 3
    assert trainer.global_step == 3, f"global_step counts the uncounted step {UPGRADE} (step_without_counting)"
    opt_d, opt_g = (o.optimizer if hasattr(o, "optimizer") else o for o in trainer.optimizers)
    assert _adam_steps(opt_d) == [3, 3] and _adam_steps(opt_g) == [3, 3]  # both stepped every batch
    assert not torch.equal(model.d.weight, d0)


def test_lightning_counts_every_manual_optimizer_step():
    """The behaviour ``step_without_counting`` works around (Lightning issue 17958): two steps per batch
    count two. When this fails, Lightning counts iterations itself and the workaround may go."""
    model = _TwoOptimizers(uncounted=False)
    trainer = _trainer(max_steps=-1, max_epochs=1, limit_train_batches=3)
    trainer.fit(model)
    assert model.batches == 3
    assert trainer.global_step == 6, f"manual optimisation no longer counts every optimizer step {UPGRADE}"


def test_step_without_counting_puts_the_hooks_back_when_the_step_fails():
    class Failing:
        def __init__(self):
            self._on_before_step, self._on_after_step = "before", "after"

        def step(self):
            assert self._on_before_step() is None and self._on_after_step() is None
            raise RuntimeError("step failed")

    opt = Failing()
    with pytest.raises(RuntimeError, match="step failed"):
        compat.step_without_counting(opt)
    assert (opt._on_before_step, opt._on_after_step) == ("before", "after")


def test_lightning_optimizer_has_the_step_hooks():
    from lightning.pytorch.core.optimizer import LightningOptimizer

    opt = LightningOptimizer(torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1))
    for name in ("_on_before_step", "_on_after_step"):
        assert callable(getattr(opt, name, None)), f"LightningOptimizer.{name} is gone {UPGRADE} " \
                                                   f"(step_without_counting)"


# ---------------------------------------------------------------------------------------------- loops
class _Record(Callback):
    def __init__(self):
        self.seen: list[tuple[int, int, int]] = []  # (epoch, batch_idx, consumed_batches)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append((trainer.current_epoch, batch_idx, compat.consumed_batches(trainer)))


def test_consumed_batches_counts_the_epochs_batches_including_the_one_ending():
    """Read by the data loader's ``state_dict`` when a checkpoint is written at the end of a batch: that
    batch counts as consumed; the count restarts with every epoch."""
    record = _Record()
    trainer = _trainer(max_steps=-1, max_epochs=2, limit_train_batches=3, callbacks=[record])
    trainer.fit(_TwoOptimizers())
    assert record.seen == [(0, 0, 1), (0, 1, 2), (0, 2, 3), (1, 0, 1), (1, 1, 2), (1, 2, 3)], \
        f"batch_progress.current.processed changed meaning {UPGRADE} (consumed_batches)"
    assert compat.consumed_batches(trainer) == 3
    assert compat.consumed_batches(None) == 0


class _SettleOnException(Callback):
    def on_exception(self, trainer, pl_module, exception):
        loop = trainer.fit_loop.epoch_loop
        progress = loop.batch_progress

        def counters():
            return ([getattr(progress.total, k) for k in ("ready", "started", "processed", "completed")],
                    [getattr(progress.current, k) for k in ("ready", "started", "processed", "completed")],
                    loop._batches_that_stepped)

        self.global_step = trainer.global_step
        self.before = counters()
        compat.settle_batch_counters(trainer)
        self.after = counters()


@pytest.mark.parametrize("after_step", [True, False], ids=["after_the_step", "before_the_step"])
def test_settle_batch_counters_after_an_exception_inside_a_batch(after_step):
    settle = _SettleOnException()
    trainer = _trainer(max_steps=10, callbacks=[settle])
    with pytest.raises(RuntimeError, match="failed"):
        trainer.fit(_TwoOptimizers(fail_at=2, fail_after_step=after_step))
    step = 3 if after_step else 2
    assert settle.global_step == step
    # what Lightning leaves: the failed batch (the third) started but not completed
    assert settle.before[:2] == ([3, 3, 2, 2], [3, 3, 2, 2]), \
        f"the batch counters after an exception changed {UPGRADE} (settle_batch_counters)"
    assert settle.before[2] == 2, f"epoch_loop._batches_that_stepped changed {UPGRADE} (settle_batch_counters)"
    # settled: every counter says global_step iterations finished
    assert settle.after == ([step] * 4, [step] * 4, step)


def test_settle_batch_counters_leaves_counters_it_cannot_explain():
    trainer = _trainer()
    trainer.fit(_TwoOptimizers())
    progress = trainer.fit_loop.epoch_loop.batch_progress
    progress.total.completed = progress.total.ready = 0  # global_step 3, 0 batches completed: not one in flight
    compat.settle_batch_counters(trainer)
    assert (progress.total.ready, progress.total.completed, progress.current.completed) == (0, 0, 3)


def test_loop_state_exists():
    trainer = _trainer()
    loop = trainer.fit_loop.epoch_loop
    assert hasattr(loop, "_batches_that_stepped"), f"epoch_loop._batches_that_stepped is gone {UPGRADE} " \
                                                   f"(settle_batch_counters)"
    for tracker in (loop.batch_progress.total, loop.batch_progress.current):
        for name in ("ready", "started", "processed", "completed"):
            assert hasattr(tracker, name), f"batch_progress tracker .{name} is gone {UPGRADE} " \
                                           f"(consumed_batches, settle_batch_counters)"


# ---------------------------------------------------------------------------------------------- checkpoints
def _last_step(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


@pytest.mark.filterwarnings("ignore:Using ModelCheckpoint with manual optimization")
@pytest.mark.parametrize("kind", [ModelCheckpoint, PeriodicCheckpoint])
def test_last_checkpoint_at_a_final_step_off_the_period(tmp_path, kind):
    """``save_last_checkpoint`` (``PeriodicCheckpoint``) writes last.ckpt at the final step 3 with a period
    of 2; Lightning's ``ModelCheckpoint`` alone leaves the one of step 2 (what it works around)."""
    callback = kind(dirpath=tmp_path, every_n_train_steps=2, save_last=True, save_top_k=0)
    trainer = _trainer(enable_checkpointing=True, callbacks=[callback], default_root_dir=tmp_path)
    trainer.fit(_TwoOptimizers())
    expected = 3 if kind is PeriodicCheckpoint else 2
    assert _last_step(tmp_path / "last.ckpt") == expected, f"ModelCheckpoint's last.ckpt changed {UPGRADE} " \
                                                           f"(save_last_checkpoint)"
    if kind is PeriodicCheckpoint:
        assert not compat.save_last_checkpoint(callback, trainer)  # already saved at this step


def test_model_checkpoint_has_the_private_members():
    callback = ModelCheckpoint(save_last=True)
    assert hasattr(callback, "_last_global_step_saved"), f"ModelCheckpoint._last_global_step_saved is gone {UPGRADE}"
    for name in ("_should_skip_saving_checkpoint", "_save_last_checkpoint", "_monitor_candidates"):
        assert callable(getattr(callback, name, None)), f"ModelCheckpoint.{name} is gone {UPGRADE} " \
                                                        f"(save_last_checkpoint)"


# ---------------------------------------------------------------------------------------------- launchers
def test_launcher_classes_are_importable_where_they_are_imported():
    from lightning.pytorch.strategies import launchers

    for name in ("_SubprocessScriptLauncher", "_MultiProcessingLauncher"):
        cls = getattr(launchers, name, None)
        assert cls is not None, f"lightning.pytorch.strategies.launchers.{name} is gone {UPGRADE}"
        assert callable(getattr(cls, "kill", None)), f"{name}.kill is gone {UPGRADE} (signal_ranks)"


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_ddp_ranks_started_by_rank_zero_are_found_and_ended():
    trainer = _trainer(devices=2, strategy="ddp")
    launcher = trainer.strategy.launcher
    assert compat.uses_script_launcher(trainer), f"DDP (popen) no longer uses _SubprocessScriptLauncher {UPGRADE}"
    assert hasattr(launcher, "procs") and compat.started_rank_processes(trainer) == [], \
        f"_SubprocessScriptLauncher.procs is gone {UPGRADE} (started_rank_processes)"
    assert compat.spawned_rank_processes(trainer) == []
    proc = _sleeper()
    try:
        launcher.procs = [proc]  # what the launcher records when it starts the other ranks
        assert compat.started_rank_processes(trainer) == compat.rank_processes(trainer) == [proc]
        compat.signal_ranks(trainer, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, f"_SubprocessScriptLauncher.kill changed {UPGRADE}"
    finally:
        proc.kill()
        proc.wait()


def test_ddp_spawn_ranks_are_found_and_signalled():
    trainer = _trainer(devices=2, strategy="ddp_spawn")
    launcher = trainer.strategy.launcher
    assert not compat.uses_script_launcher(trainer)
    assert hasattr(launcher, "procs") and compat.spawned_rank_processes(trainer) == [], \
        f"_MultiProcessingLauncher.procs is gone {UPGRADE} (spawned_rank_processes)"
    proc = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,), daemon=True)
    proc.start()
    try:
        launcher.procs = [proc]  # what the launcher records when it spawns the ranks
        assert compat.spawned_rank_processes(trainer) == compat.rank_processes(trainer) == [proc]
        assert compat.started_rank_processes(trainer) == []
        compat.signal_ranks(trainer, signal.SIGTERM)
        proc.join(timeout=30)
        assert proc.exitcode == -signal.SIGTERM, f"_MultiProcessingLauncher.kill changed {UPGRADE}"
    finally:
        proc.kill()
        proc.join()


def test_a_single_process_trainer_has_no_rank_processes():
    trainer = _trainer()
    assert not compat.uses_script_launcher(trainer)
    assert compat.started_rank_processes(trainer) == compat.spawned_rank_processes(trainer) == []
    assert compat.rank_processes(trainer) == compat.rank_processes(None) == []
    compat.signal_ranks(trainer, signal.SIGTERM)  # nothing to signal


# ---------------------------------------------------------------------------------------------- signals
def test_trainer_has_a_signal_connector():
    connector = compat.signal_connector(_trainer())
    assert connector is not None, f"Trainer._signal_connector is gone {UPGRADE} (signal_connector)"
    assert callable(getattr(type(connector), "register_signal_handlers", None)), \
        f"Trainer._signal_connector.register_signal_handlers is gone {UPGRADE} (call_after_signal_handlers)"


class _Seen:
    def __init__(self):
        self.handlers = []

    def __call__(self):
        self.handlers.append(signal.getsignal(signal.SIGTERM))


def test_call_after_signal_handlers_runs_right_after_lightnings_registration():
    from lightning.pytorch.trainer.connectors.signal_connector import _HandlersCompose

    previous = signal.getsignal(signal.SIGTERM)
    trainer, seen = _trainer(), _Seen()
    assert compat.call_after_signal_handlers(trainer, seen)
    assert not compat.call_after_signal_handlers(trainer, _Seen())  # once per trainer
    trainer.fit(_TwoOptimizers())
    assert len(seen.handlers) == 1, f"fit no longer calls _signal_connector.register_signal_handlers {UPGRADE}"
    assert isinstance(seen.handlers[0], _HandlersCompose), \
        f"register_signal_handlers no longer installs Lightning's SIGTERM handler {UPGRADE}"
    assert signal.getsignal(signal.SIGTERM) == previous  # Lightning's teardown put the handler back
    trainer.fit(_TwoOptimizers(), ckpt_path=None)  # again at every fit
    assert len(seen.handlers) == 2


def test_call_after_signal_handlers_survives_pickling_the_trainer():
    """Spawned ranks (``ddp_spawn``) get a pickled copy of the Trainer."""
    trainer = _trainer()
    compat.call_after_signal_handlers(trainer, _Seen())
    copy = pickle.loads(pickle.dumps(trainer))
    connector = compat.signal_connector(copy)
    connector.register_signal_handlers()
    try:
        assert len(connector.register_signal_handlers.then.handlers) == 1
    finally:
        connector.teardown()


# ---------------------------------------------------------------------------------------------- the rest
_PRIVATE = re.compile(r"\._on_(before|after)_step\b|\bbatch_progress\b|\._batches_that_stepped\b|_signal_connector\b"
                      r"|\._last_global_step_saved\b|\._should_skip_saving_checkpoint\b|\._save_last_checkpoint\b"
                      r"|\._monitor_candidates\b|\b_SubprocessScriptLauncher\b|\b_MultiProcessingLauncher\b"
                      r"|launcher\.(procs|kill)\b|from lightning[\w.]* import .*\b_[A-Za-z]")
# models/base.py: DiffusionModule.step_uncounted still swaps the step hooks itself instead of calling
# lightning_compat.step_without_counting
def test_no_private_lightning_use_outside_the_compat_module():
    found = []
    for path in sorted((ROOT / "siddm_lab").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "siddm_lab/utils/lightning_compat.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if _PRIVATE.search(line):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "private Lightning internals used outside siddm_lab/utils/lightning_compat.py " \
                      "(move them there, with a test here):\n" + "\n".join(found)
