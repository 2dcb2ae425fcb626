"""DDPM (Ho et al. 2020): a denoiser trained by regression on ε, x0 or v; ancestral sampling.

Objective (REFERENCES §1), with t ~ U{0..T-1}, ε ~ N(0, I), x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε:
    L = E || f_θ(x_t, t) - target ||²,  target ∈ {ε, x0, v = sqrt(ᾱ_t) ε - sqrt(1-ᾱ_t) x0}.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from siddm_lab.diffusion import PREDICTION_TYPES
from siddm_lab.errors import ConfigError
from siddm_lab.models.base import DiffusionModule


class DDPM(DiffusionModule):
    """Args: net ``f(x_t, t) -> R^shape(x)``; ``prediction_type`` ∈ {eps, x0, v}; the rest as
    ``DiffusionModule``."""

    def __init__(self, net: nn.Module, diffusion, optimizer, lr_scheduler=None, prediction_type: str = "eps",
                 sampling: dict | None = None, eval_num_samples: int = 1000, log_every_n_steps: int = 50):
        super().__init__(diffusion, optimizer, lr_scheduler, sampling, eval_num_samples, log_every_n_steps)
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"model.prediction_type={prediction_type!r} is unknown; allowed: {', '.join(PREDICTION_TYPES)}"
            )
        self.net = net
        self.prediction_type = prediction_type

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, t)

    def loss(self, x0: torch.Tensor, t: torch.Tensor | None = None, noise: torch.Tensor | None = None):
        if t is None:
            t = self.diffusion.sample_timesteps(x0.shape[0], device=x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.diffusion.q_sample(x0, t, noise)
        target = self.diffusion.training_target(self.prediction_type, x0, noise, t)
        return F.mse_loss(self.net(x_t, t), target)

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.check_finite("train/loss", loss.detach())
        if batch_idx % self.log_every_n_steps == 0:
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        # Fixed t and noise per batch: the validation loss is comparable across evaluations.
        g = torch.Generator().manual_seed(10_000 + batch_idx)
        t = torch.randint(0, self.diffusion.num_timesteps, (batch.shape[0],), generator=g).to(self.device)
        noise = torch.randn(batch.shape, generator=g).to(self.device, batch.dtype)
        loss = self.loss(batch, t, noise)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def predict_x0_eps(self, x_t, t):
        return self.diffusion.to_x0_eps(self.prediction_type, x_t, t, self.net(x_t, t), self.sampling["clip_x0"])


class DDIM(DDPM):
    """DDIM (Song, Meng, Ermon 2021): trained exactly as DDPM; samples with the DDIM update
    (``sampling.name=ddim``, η, S steps over a sub-sequence) by default. The training objective is
    unchanged, so one checkpoint serves any sampler (see ``siddm-sample``)."""

    def __init__(self, *args, sampling: dict | None = None, **kwargs):
        sampling = {"name": "ddim", "eta": 0.0, "steps": 50, **(dict(sampling) if sampling else {})}
        super().__init__(*args, sampling=sampling, **kwargs)
