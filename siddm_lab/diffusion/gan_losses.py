"""Loss terms of DDGAN (Xiao et al. 2022) and SIDDM (Xu et al. 2023), as pure tensor functions.

Conventions (REFERENCES §4-5): the generator G(x_t, z, t) predicts x0', then
x'_{t-1} ~ q(x_{t-1} | x_t, x0') (``GaussianDiffusion.q_posterior_sample``); real pairs come from
``GaussianDiffusion.q_sample_pairs``. Discriminator outputs are logits. Per-sample terms are
averaged over the batch (and, for regressions, over all elements, as the released code's mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from siddm_lab.diffusion.gaussian import GaussianDiffusion, extract
from siddm_lab.errors import ConfigError

AFD_FORMS = ("released", "paper")


def d_loss_real(logits_real: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN, discriminator on real: E softplus(-D(x))."""
    return F.softplus(-logits_real).mean()


def d_loss_fake(logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator on fake: E softplus(D(x'))."""
    return F.softplus(logits_fake).mean()


def g_loss_adv(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: E softplus(-D(x'))."""
    return F.softplus(-logits_fake).mean()


def r1_penalty(logits_real: torch.Tensor, x_real: torch.Tensor, gamma: float) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): γ/2 · E ||∇_x D(x)||² on real data (``x_real`` must require grad).

    Lazy regularisation is the caller's business: the reference DDGAN adds it un-scaled every
    ``lazy_reg`` discriminator steps.
    """
    (grad,) = torch.autograd.grad(logits_real.sum(), x_real, create_graph=True)
    return gamma / 2 * grad.pow(2).flatten(1).sum(1).mean()


def afd_cross_entropy(diffusion: GaussianDiffusion, x_prev_fake: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                      form: str = "released", noise: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy part of the auxiliary forward diffusion (AFD) term of SIDDM.

    q(x_t | x_{t-1}) = N(sqrt(1-β_t) x_{t-1}, β_t I), so -log q(x_t | x'_{t-1}) is, up to constants,
    an L2 between x_t and sqrt(1-β_t)·x'_{t-1}:

    * ``paper``: mean (x_t - sqrt(1-β_t) x'_{t-1})²
    * ``released`` (the authors' toy code): mean (sqrt(1-β_t) x'_{t-1} + sqrt(β_t) ε - x_t)², i.e. the
      posterior sample re-diffused with fresh noise ε; its expectation over ε is the paper form
      plus β_t per element, so both have the same gradient in expectation.
    """
    if form not in AFD_FORMS:
        raise ConfigError(f"ablation.afd_form={form!r} is unknown; allowed: {', '.join(AFD_FORMS)}")
    mean = extract(diffusion.sqrt_alphas, t, x_prev_fake) * x_prev_fake
    if form == "released":
        if noise is None:
            noise = torch.randn_like(x_prev_fake)
        mean = mean + extract(diffusion.sqrt_betas, t, x_prev_fake) * noise
    return (mean - x_t).pow(2).mean()


def afd_entropy_g(x_t: torch.Tensor, c_pred: torch.Tensor) -> torch.Tensor:
    """Entropy part of AFD, generator side (a reconstruction of the paper's min-max game, REFERENCES §5):
    the generator maximises the conditional estimator's error, i.e. minimises -E ||x_t - C_ψ(x'_{t-1}, t)||².
    ``c_pred`` = C_ψ(x'_{t-1}, t) computed with gradients flowing into x'_{t-1} (ψ frozen)."""
    return -(x_t - c_pred).pow(2).mean()


def afd_entropy_c(x_t: torch.Tensor, c_pred: torch.Tensor) -> torch.Tensor:
    """Entropy part of AFD, estimator side: ψ minimises E ||x_t - C_ψ(x'_{t-1}, t)||² (x'_{t-1} detached)."""
    return (x_t - c_pred).pow(2).mean()


def disc_reconstruction(x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """SIDDM's discriminator regulariser: the auxiliary head D_aux(x_{t-1}, t) reconstructs x0 from REAL
    x_{t-1}: E ||D_aux(x_{t-1}, t) - x0||²."""
    return (x0_pred - x0).pow(2).mean()
