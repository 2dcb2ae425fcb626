"""Continuous-time cosine diffusion (the released SIDDM toy code) and the diffusion-GAN sampling chain."""

from __future__ import annotations

import math

import pytest
import torch

from siddm_lab.diffusion import CosineContinuousTime, GaussianDiffusion, RandomSource, sample_generator_chain
from siddm_lab.errors import ConfigError


def test_alpha_bar_values():
    p = CosineContinuousTime(4)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    expected = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    expected[-1] = 0.0  # the cosine is clipped at 0 before squaring
    torch.testing.assert_close(p.alpha_bar(t), expected, atol=1e-15, rtol=0)
    assert 0.9998 < float(p.alpha_bar(torch.tensor(0.0))) < 1.0  # the data is never exactly clean


def test_training_times():
    p = CosineContinuousTime(4, t_min=1e-4)
    rng = RandomSource.single(torch.Generator().manual_seed(0))
    t = p.sample_times(rng, torch.zeros(20000, 2))
    assert t.shape == (20000,) and float(t.min()) == pytest.approx(1e-4) and float(t.max()) <= 1.0
    assert float(t.mean()) == pytest.approx(0.5, abs=0.01)
    torch.testing.assert_close(p.prev_time(t), (t - 0.25).clamp(min=0))
    assert float((p.prev_time(t) == 0).float().mean()) == pytest.approx(0.25, abs=0.01)


def test_pair_and_posterior_against_gaussian_conditioning():
    """(x_prev, x_t) given x0 is jointly Gaussian; the posterior mean/variance must be its conditional."""
    p = CosineContinuousTime(4)
    t = torch.tensor([0.3, 0.6, 1.0, 0.1], dtype=torch.float64)
    t_prev = p.prev_time(t)
    ab_p, ab = p.alpha_bar(t_prev), p.alpha_bar(t)
    beta = 1 - ab / ab_p
    x0 = torch.tensor([[1.0], [-2.0], [0.5], [3.0]], dtype=torch.float64)
    x_t = torch.tensor([[0.3], [1.1], [-0.7], [2.0]], dtype=torch.float64)
    cov = (1 - beta).sqrt() * (1 - ab_p)
    mean_ref = ab_p.sqrt()[:, None] * x0 + (cov / (1 - ab))[:, None] * (x_t - ab.sqrt()[:, None] * x0)
    var_ref = (1 - ab_p) - cov**2 / (1 - ab)
    mean, var = p.q_posterior_mean_variance(x0, x_t, t)
    torch.testing.assert_close(mean, mean_ref)
    torch.testing.assert_close(var.squeeze(-1), var_ref)
    # Monte Carlo: x_t of a pair is distributed as q(x_t | x0)
    g = torch.Generator().manual_seed(1)
    n = 200_000
    tt = torch.full((n,), 0.6)
    x0s = torch.full((n, 1), 2.0)
    _, xt = p.q_sample_pairs(x0s, tt, torch.randn(n, 1, generator=g), torch.randn(n, 1, generator=g))
    a = float(p.alpha_bar(torch.tensor(0.6)))
    assert float(xt.mean()) == pytest.approx(2.0 * math.sqrt(a), abs=0.01)
    assert float(xt.var()) == pytest.approx(1 - a, abs=0.01)


@pytest.mark.parametrize("K", [1, 2, 4, 7])
def test_continuous_chain_visits_the_forward_marginals(K):
    """Data = a point mass at c and an oracle generator (x0' = c): the state fed to the generator at
    t = i/K must be distributed as q(x_t | c), and the chain must return x0' = c."""
    p = CosineContinuousTime(4)
    c = torch.tensor([1.5, -0.5])
    seen = {}

    def oracle(x, t):
        seen[round(float(t[0]), 6)] = x.clone()
        return c.expand_as(x)

    rng = RandomSource.single(torch.Generator().manual_seed(0))
    n = 100_000
    out = sample_generator_chain(oracle, p, torch.randn(n, 2, generator=torch.Generator().manual_seed(1)), rng, K)
    torch.testing.assert_close(out, c.expand(n, 2))
    assert sorted(seen) == sorted(round(i / K, 6) for i in range(1, K + 1))
    for t, x in seen.items():
        a = float(p.alpha_bar(torch.tensor(t)))
        torch.testing.assert_close(x.mean(0), math.sqrt(a) * c, atol=0.02, rtol=0)
        torch.testing.assert_close(x.var(0), torch.full((2,), 1 - a), atol=0.02, rtol=0)


def test_discrete_chain_and_its_step_count():
    d = GaussianDiffusion.from_schedule("ddgan_vp", 4)
    c = torch.tensor([0.5, 2.0])
    seen = {}

    def oracle(x, t):
        seen[int(t[0])] = x.clone()
        return c.expand_as(x)

    rng = RandomSource.single(torch.Generator().manual_seed(0))
    out = sample_generator_chain(oracle, d, torch.randn(100_000, 2, generator=torch.Generator().manual_seed(2)), rng)
    torch.testing.assert_close(out, c.expand(100_000, 2))
    for t, x in seen.items():
        a = float(d.alphas_cumprod[t])
        torch.testing.assert_close(x.mean(0), math.sqrt(a) * c, atol=0.02, rtol=0)
        torch.testing.assert_close(x.var(0), torch.full((2,), 1 - a), atol=0.02, rtol=0)
    with pytest.raises(ConfigError, match="T=4"):
        sample_generator_chain(oracle, d, torch.randn(3, 2), rng, steps=2)


def test_bad_settings():
    with pytest.raises(ConfigError, match="diffusion.steps"):
        CosineContinuousTime(0)
    with pytest.raises(ConfigError, match="t_min"):
        CosineContinuousTime(4, t_min=1.5)
    with pytest.raises(ConfigError, match="positive integer"):
        sample_generator_chain(lambda x, t: x, CosineContinuousTime(4), torch.zeros(2, 2), RandomSource(), steps=0)
