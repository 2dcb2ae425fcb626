"""latent_spread against the closed-form posterior of Gaussian data."""

import pytest
import torch

from siddm_lab.diffusion import GaussianDiffusion
from siddm_lab.diffusion.diagnostics import latent_spread
from siddm_lab.errors import ConfigError

S2 = 0.5  # data x0 ~ N(0, S2 I)


def _posterior(diffusion, t):
    """(mean coefficient, variance) of x0 | x_t for x0 ~ N(0, S2 I): x0 | x_t ~ N(c x_t, V I)."""
    ab = float(diffusion.alphas_cumprod[t])
    den = ab * S2 + 1 - ab
    return ab ** 0.5 * S2 / den, S2 * (1 - ab) / den


@pytest.fixture
def setup():
    diffusion = GaussianDiffusion(torch.tensor([0.1, 0.2, 0.4, 0.6]))
    x0 = S2 ** 0.5 * torch.randn(4000, 8, generator=torch.Generator().manual_seed(0))
    return diffusion, x0


@pytest.mark.parametrize("t", [0, 2, 3])
def test_posterior_sampler_has_ratio_one(setup, t):
    diffusion, x0 = setup
    c, v = _posterior(diffusion, t)
    g = torch.Generator().manual_seed(1)

    def sampler(x_t, tt):
        return c * x_t + v ** 0.5 * torch.randn(x_t.shape, generator=g)

    r = latent_spread(sampler, diffusion, x0, t, k=8, generator=torch.Generator().manual_seed(2))
    assert r["latent_var"] == pytest.approx(v, rel=0.03)
    assert r["mean_error"] == pytest.approx(v, rel=0.05)
    assert r["mse"] == pytest.approx(2 * v, rel=0.05)  # x0' and x0 independent given x_t, each of variance V
    assert r["ratio"] == pytest.approx(1.0, abs=0.06)


@pytest.mark.parametrize("t", [0, 3])
def test_posterior_mean_has_ratio_zero(setup, t):
    diffusion, x0 = setup
    c, v = _posterior(diffusion, t)
    r = latent_spread(lambda x_t, tt: c * x_t, diffusion, x0, t, k=4, generator=torch.Generator().manual_seed(2))
    assert r["latent_var"] == pytest.approx(0.0, abs=1e-12)
    assert r["ratio"] == pytest.approx(0.0, abs=1e-9)
    assert r["mean_error"] == pytest.approx(v, rel=0.05)
    assert r["mse"] == pytest.approx(r["mean_error"])


def test_timesteps_and_latents_are_passed_through(setup):
    diffusion, x0 = setup
    seen = []

    def spy(x_t, tt):
        seen.append((x_t.shape, tt.unique().tolist()))
        return torch.zeros_like(x_t)

    latent_spread(spy, diffusion, x0[:10], 1, k=3)
    assert seen == [((30, 8), [1])]


@pytest.mark.parametrize("kw, match", [({"k": 1}, "k=1"), ({"t": 4}, "0..3"), ({"t": -1}, "0..3")])
def test_bad_arguments_are_named(setup, kw, match):
    diffusion, x0 = setup
    with pytest.raises(ConfigError, match=match):
        latent_spread(lambda x_t, tt: x_t, diffusion, x0, **{"t": 0, **kw})
