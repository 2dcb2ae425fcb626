"""Per-step seeding: what makes a resumed run continue exactly."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback


class StepSeed(Callback):
    """Reseed the training noise before every batch from ``(seed, rank, global_step)``.

    The noise, timesteps and latents a training step draws then depend only on where the run is,
    not on its history: a run resumed from a checkpoint at step N draws what the uninterrupted run
    drew from step N on (with the resumable batches of ``siddm_lab.data.sampling``). Each DDP rank
    gets its own stream. A single model draws from torch's global RNG; the members of an ensemble
    (``model.member_seeds``) from their own generators, each reseeded with its own seed in place of
    ``seed``, which is what a single run with that seed draws.
    """

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    @staticmethod
    def step_seed(seed: int, rank: int, step: int) -> int:
        return ((seed * 1_000_003 + rank) * 1_000_000_007 + step) % (2**63 - 1)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        rank, step = trainer.global_rank, trainer.global_step
        seeds = getattr(pl_module, "member_seeds", None)
        if seeds:
            pl_module.rng.manual_seed([self.step_seed(s, rank, step) for s in seeds])
        else:
            torch.manual_seed(self.step_seed(self.seed, rank, step))
