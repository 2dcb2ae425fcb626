"""EMA of the weights via Lightning's WeightAveraging, with a fused (foreach) update.

Behaviour is Lightning's: the average is swapped in for validation, copied into the model at
the end of training and saved as the checkpoint's ``state_dict`` (the raw weights go to
``current_model_state``), so a resumed run continues both exactly.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import WeightAveraging

from siddm_lab.errors import ConfigError


class _FusedEMA:
    """The fused multi-tensor EMA update of ``torch.optim.swa_utils.get_ema_multi_avg_fn``, as a
    picklable object (spawned DDP processes pickle the callbacks)."""

    def __init__(self, decay: float):
        self.decay = decay

    @torch.no_grad()
    def __call__(self, ema_param_list, current_param_list, _num_averaged=None):
        if torch.is_floating_point(ema_param_list[0]) or torch.is_complex(ema_param_list[0]):
            torch._foreach_lerp_(ema_param_list, current_param_list, 1 - self.decay)
        else:
            for p_ema, p_model in zip(ema_param_list, current_param_list):
                p_ema.copy_(p_ema * self.decay + p_model * (1 - self.decay))


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
        super().__init__(use_buffers=False, multi_avg_fn=_FusedEMA(decay))
        self.decay = decay
        self.update_every_n_steps = update_every_n_steps
        self.start_step = start_step

    def should_update(self, step_idx=None, epoch_idx=None) -> bool:
        return step_idx is not None and step_idx >= self.start_step and step_idx % self.update_every_n_steps == 0
