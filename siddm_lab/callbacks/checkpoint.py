"""Checkpoints every N iterations and at the last one."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint


class PeriodicCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (every ``every_n_train_steps`` iterations, ``last.ckpt``) that also
    writes ``last.ckpt`` at the final iteration (``trainer.max_steps``) when it is not a multiple of the
    period: a finished run's last checkpoint then holds its final weights, EMA and optimizer states
    (written inside the training loop, before the weight average is copied into the model)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        if (self.save_last and trainer.max_steps is not None and step == trainer.max_steps
                and self._last_global_step_saved != step and not self._should_skip_saving_checkpoint(trainer)):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
