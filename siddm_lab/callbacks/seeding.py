"""Per-step seeding: what makes a resumed run continue exactly."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback


class StepSeed(Callback):
    """Reseed torch's global RNG before every training batch from ``(seed, rank, global_step)``.

    The noise, timesteps and latents a training step draws then depend only on where the run is,
    not on its history: a run resumed from a checkpoint at step N draws what the uninterrupted run
    drew from step N on (with the resumable batches of ``siddm_lab.data.sampling``). Each DDP rank
    gets its own stream.
    """

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def step_seed(self, rank: int, step: int) -> int:
        return ((self.seed * 1_000_003 + rank) * 1_000_000_007 + step) % (2**63 - 1)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        torch.manual_seed(self.step_seed(trainer.global_rank, trainer.global_step))
