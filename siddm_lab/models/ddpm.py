"""DDPM (Ho et al. 2020) and DDIM (Song et al. 2021): a denoiser trained by regression on ε, x0 or v.

Objective (REFERENCES §1, ``siddm_lab.diffusion.DDPMLoss``), with t ~ U{0..T-1}, ε ~ N(0, I),
x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε:
    L = E || f_θ(x_t, t) - target ||²,  target ∈ {ε, x0, v = sqrt(ᾱ_t) ε - sqrt(1-ᾱ_t) x0},
plus, with a discriminator, an adversarial term on the denoiser's x0' (``DDPMLoss``).
"""

from __future__ import annotations

import torch
from torch import nn

from siddm_lab.diffusion import AncestralSampler, DDIMSampler, DDPMLoss, RandomSource
from siddm_lab.models.base import DiffusionModule


class _Denoiser(nn.Module):
    """f(x_t, t) seen as a generator G(x_t, t, z) without latent (the objectives' interface)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x_t, t, z=None):
        return self.net(x_t, t)


class DDPM(DiffusionModule):
    """Args: net ``f(x_t, t) -> R^shape(x)``; ``prediction_type`` ∈ {eps, x0, v}; ``discriminator``
    (optional) with ``optimizer_d`` and its weight ``adversarial``; the rest as ``DiffusionModule``.
    Samples with DDPM's ancestral sampler over all T steps unless a sampler is configured."""

    def __init__(self, net: nn.Module, diffusion, optimizer, lr_scheduler=None, prediction_type: str = "eps",
                 discriminator=None, optimizer_d=None, lr_scheduler_d=None, adversarial: float = 0.1,
                 grad_clip: float | None = None, grad_clip_d: float | None = None,
                 log_every_n_steps: int = 50, data_shape=None):
        super().__init__(_Denoiser(net), diffusion, DDPMLoss(prediction_type, adversarial), discriminator,
                         optimizer, optimizer_d, lr_scheduler, lr_scheduler_d, grad_clip, grad_clip_d,
                         log_every_n_steps, data_shape)
        self.prediction_type = prediction_type

    @property
    def net(self) -> nn.Module:
        """The denoiser f(x_t, t)."""
        return self.generator.net

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, t)

    def loss(self, x0: torch.Tensor, t: torch.Tensor | None = None, noise: torch.Tensor | None = None):
        return self.objective(self.net, self.diffusion, x0, t, noise)

    def validation_step(self, batch, batch_idx):
        # Fixed t and noise per batch: the validation loss is comparable across evaluations.
        g = torch.Generator().manual_seed(10_000 + batch_idx)
        t = torch.randint(0, self.diffusion.num_timesteps, (batch.shape[0],), generator=g).to(self.device)
        noise = self.diffusion.noise_like(batch, t, RandomSource.single(g)).to(self.device, batch.dtype)
        loss = self.loss(batch, t, noise)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def predict_x0_eps(self, x_t, t):
        return self.diffusion.to_x0_eps(self.prediction_type, x_t, t, self.net(x_t, t))

    def default_sampler(self):
        return AncestralSampler(self.diffusion)


class DDIM(DDPM):
    """DDIM (Song, Meng, Ermon 2021): trained exactly as DDPM; samples with deterministic DDIM (η = 0) over
    50 uniform steps unless a sampler is configured. One checkpoint serves any sampler (``siddm-sample``)."""

    def default_sampler(self):
        return DDIMSampler(self.diffusion, eta=0.0, steps=min(50, self.diffusion.num_timesteps))
