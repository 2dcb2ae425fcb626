"""EMA of the weights via Lightning's WeightAveraging, with a fused (foreach) update.

Behaviour is Lightning's: the average is swapped in for validation, copied into the model at
the end of training and saved as the checkpoint's ``state_dict`` (the raw weights go to
``current_model_state``), so a resumed run continues both exactly.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

from siddm_lab.errors import ConfigError


class EMA(WeightAveraging):
    """θ_ema ← decay·θ_ema + (1-decay)·θ after every ``update_every_n_steps`` optimizer steps.

    Args:
        decay: EMA decay (DDPM/DDGAN CIFAR-10: 0.9999).
        update_every_n_steps: update period in optimizer steps.
        start_step: the average starts as a copy of the weights at this step.
    """

    def __init__(self, decay: float = 0.999, update_every_n_steps: int = 1, start_step: int = 0):
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"callbacks.ema.decay must be in (0, 1), got {decay}")
        if update_every_n_steps < 1 or start_step < 0:
            raise ConfigError("callbacks.ema.update_every_n_steps must be >= 1 and start_step >= 0")
        # Buffers (the diffusion constants) are not averaged: they never change.
        super().__init__(use_buffers=False, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.decay = decay
        self.update_every_n_steps = update_every_n_steps
        self.start_step = start_step

    def should_update(self, step_idx=None, epoch_idx=None) -> bool:
        return step_idx is not None and step_idx >= self.start_step and step_idx % self.update_every_n_steps == 0
