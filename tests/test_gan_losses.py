"""SIDDM/DDGAN loss terms on tiny tensors against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from siddm_lab.diffusion import GaussianDiffusion
from siddm_lab.diffusion import gan_losses as L
from siddm_lab.errors import ConfigError


def sp(v):
    return math.log1p(math.exp(v))


def test_nonsaturating_terms():
    logits = torch.tensor([0.0, 2.0, -1.0])
    assert L.d_loss_real(logits).item() == pytest.approx((sp(0) + sp(-2) + sp(1)) / 3)
    assert L.d_loss_fake(logits).item() == pytest.approx((sp(0) + sp(2) + sp(-1)) / 3)
    assert L.g_loss_adv(logits).item() == pytest.approx((sp(0) + sp(-2) + sp(1)) / 3)


def test_r1_penalty_of_a_linear_discriminator():
    w = torch.tensor([3.0, -4.0])  # D(x) = w·x  =>  ||∇_x D||² = 25 for every sample
    x = torch.randn(5, 2, requires_grad=True)
    r1 = L.r1_penalty(x @ w, x, gamma=0.02)
    assert r1.item() == pytest.approx(0.02 / 2 * 25)
    # differentiable w.r.t. the discriminator's parameters (create_graph)
    wp = torch.tensor([3.0, -4.0], requires_grad=True)
    L.r1_penalty(x @ wp, x, gamma=1.0).backward()
    torch.testing.assert_close(wp.grad, wp.detach())  # d/dw (1/2 ||w||²) = w


def test_afd_cross_entropy_forms():
    d = GaussianDiffusion(torch.tensor([0.36, 0.64], dtype=torch.float64))  # sqrt(1-β) = 0.8, 0.6
    t = torch.tensor([0, 1])
    x_prev = torch.tensor([[1.0], [2.0]])
    x_t = torch.tensor([[0.5], [1.0]])
    # paper: ((0.8·1 - 0.5)² + (0.6·2 - 1)²) / 2 = (0.09 + 0.04) / 2
    assert L.afd_cross_entropy(d, x_prev, x_t, t, form="paper").item() == pytest.approx(0.065)
    noise = torch.tensor([[1.0], [-1.0]])  # sqrt(β) = 0.6, 0.8
    # released: ((0.8 + 0.6 - 0.5)² + (1.2 - 0.8 - 1)²) / 2 = (0.81 + 0.36) / 2
    assert L.afd_cross_entropy(d, x_prev, x_t, t, form="released", noise=noise).item() == pytest.approx(0.585)
    with pytest.raises(ConfigError, match="afd_form"):
        L.afd_cross_entropy(d, x_prev, x_t, t, form="nope")


def test_afd_released_form_is_paper_plus_beta_in_expectation():
    torch.manual_seed(0)
    d = GaussianDiffusion.from_schedule("ddgan_vp", 4)
    t = torch.full((200_000,), 2)
    x_prev, x_t = torch.randn(200_000, 1), torch.randn(200_000, 1)
    paper = L.afd_cross_entropy(d, x_prev, x_t, t, form="paper").item()
    released = L.afd_cross_entropy(d, x_prev, x_t, t, form="released").item()
    assert released == pytest.approx(paper + float(d.betas[2]), rel=1e-2)


def test_entropy_terms_and_reconstruction():
    x_t = torch.tensor([[1.0, 2.0]])
    c = torch.tensor([[0.0, 0.0]])
    assert L.afd_entropy_c(x_t, c).item() == pytest.approx(2.5)
    assert L.afd_entropy_g(x_t, c).item() == pytest.approx(-2.5)
    assert L.disc_reconstruction(torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 3.0]])).item() == pytest.approx(2.5)
