"""The training objectives (siddm_lab.diffusion.losses) against values computed by hand.

The nets are closed-form functions, the process a real one, and every random draw of the objective
is recorded (``Recorder``), so each term can be recomputed from the paper's formulas with the same
numbers. Draw order of a GAN step: t, the pair's two noises, z, the posterior noise (then, in the
generator step, the AFD re-diffusion noise).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from siddm_lab.diffusion import (
    CosineContinuousTime,
    DDGANLoss,
    DDPMLoss,
    GANParts,
    GaussianDiffusion,
    RandomSource,
    SIDDMLoss,
    SIDDMReleasedLoss,
)
from siddm_lab.nets import DiscriminatorOutput


class Recorder(RandomSource):
    """A seeded single-model source that keeps every tensor it hands out."""

    def __init__(self, seed=0):
        super().__init__([torch.Generator().manual_seed(seed)], stacked=False)
        self.draws = []

    def _draw(self, *a, **k):
        out = super()._draw(*a, **k)
        self.draws.append(out)
        return out


W = torch.tensor([0.7, -0.4])
V = torch.tensor([0.3, 0.2])


def G(x, t, z):
    """x0' = 0.5 x + z + 0.01 t (closed form, depends on every input)."""
    return 0.5 * x + z + 0.01 * t.float()[:, None]


class D:
    """logit = x·W + 0.1 t (+ x_cond·V if given); cond = x + 1; aux = 2x. Records its inputs."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, x_cond=None, heads=("logit",)):
        self.calls.append((x, t, x_cond))
        logit = x @ W + 0.1 * t.float() + (0 if x_cond is None else x_cond @ V)
        return DiscriminatorOutput(logit=logit, cond=x + 1 if "cond" in heads else None,
                                   aux=2 * x if "aux" in heads else None)


def parts(process, rng, z_uniform=False):
    def sample_z(x):
        return rng.rand((x.shape[0], 2)) if z_uniform else rng.randn((x.shape[0], 2))

    return GANParts(G, D(), process, sample_z, rng)


def discrete():
    return GaussianDiffusion.from_schedule("ddgan_vp", 4)


def posterior(diff, x0, x_t, t, noise):
    """q(x_{t-1} | x_t, x0) sample by the DDPM formulas (REFERENCES §1), from the betas alone."""
    b = diff.betas[t].float()[:, None]
    ab = torch.cumprod(1 - diff.betas, 0)[t].float()[:, None]
    ab_prev = torch.where(t[:, None] > 0, torch.cumprod(1 - diff.betas, 0)[(t - 1).clamp(min=0)].float()[:, None],
                          torch.ones_like(ab))
    mean = ab_prev.sqrt() * b / (1 - ab) * x0 + (1 - b).sqrt() * (1 - ab_prev) / (1 - ab) * x_t
    var = (1 - ab_prev) / (1 - ab) * b
    return mean + (t[:, None] > 0) * var.sqrt() * noise


def pair(diff, x0, t, n1, n2):
    ab = torch.cumprod(1 - diff.betas, 0)
    ab_prev = torch.where(t > 0, ab[(t - 1).clamp(min=0)], torch.ones_like(ab[t])).float()[:, None]
    x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * n1
    b = diff.betas[t].float()[:, None]
    return x_prev, (1 - b).sqrt() * x_prev + b.sqrt() * n2


X0 = torch.tensor([[1.0, -2.0], [0.5, 0.25], [-1.5, 3.0], [2.0, 0.0], [0.0, -0.5]])


def test_bce_on_sigmoid_equals_softplus():
    """The released code's BCE on sigmoid(D) is the softplus form the objectives use (REFERENCES §5)."""
    logits = torch.linspace(-15, 15, 301, dtype=torch.float64)
    p = torch.sigmoid(logits)
    torch.testing.assert_close(F.binary_cross_entropy(p, torch.ones_like(p), reduction="none"), F.softplus(-logits))
    torch.testing.assert_close(F.binary_cross_entropy(p, torch.zeros_like(p), reduction="none"), F.softplus(logits))
    # where torch's BCE clips its log (-100) softplus keeps the exact value
    big = torch.tensor([150.0], dtype=torch.float64)
    assert float(F.binary_cross_entropy(torch.sigmoid(-big), torch.ones(1, dtype=torch.float64))) == 100.0
    assert float(F.softplus(big)) == pytest.approx(150.0)


def test_ddpm_loss_by_hand():
    diff = discrete()
    rng = Recorder()

    def net(x, t):
        return 0.3 * x + t.float()[:, None]

    loss = DDPMLoss("eps")(net, diff, X0, rng=rng)
    t, eps = rng.draws
    ab = torch.cumprod(1 - diff.betas, 0)[t].float()[:, None]
    x_t = ab.sqrt() * X0 + (1 - ab).sqrt() * eps
    assert float(loss) == pytest.approx(float(((net(x_t, t) - eps) ** 2).mean()), rel=1e-6)


@pytest.mark.parametrize("with_discriminator", [False, True])
def test_ddpm_terms_by_hand(with_discriminator):
    """DDPMLoss as a module objective: the generator's terms are the regression (and, with a
    discriminator, adversarial · softplus(−D(x0', t)) on the denoiser's x0'); the discriminator's
    terms score the data against x0' at the same t."""
    diff = discrete()

    def net(x, t, z=None):
        return 0.3 * x + t.float()[:, None]

    def x0_of(x_t, t, ab):
        return (x_t - (1 - ab).sqrt() * net(x_t, t)) / ab.sqrt()

    objective = DDPMLoss("eps", adversarial=0.25)
    rng = Recorder(3)
    d = D() if with_discriminator else None
    g = objective.g_terms(GANParts(net, d, diff, lambda x: None, rng), X0)
    t, eps = rng.draws
    ab = torch.cumprod(1 - diff.betas, 0)[t].float()[:, None]
    x_t = ab.sqrt() * X0 + (1 - ab).sqrt() * eps
    assert float(g["loss"]) == pytest.approx(float(((net(x_t, t) - eps) ** 2).mean()), rel=1e-6)
    if not with_discriminator:
        assert set(g) == {"loss"}
        return
    logit = x0_of(x_t, t, ab) @ W + 0.1 * t.float()
    assert float(g["g_adv"]) == pytest.approx(0.25 * float(F.softplus(-logit).mean()), rel=1e-5)
    rng = Recorder(4)
    terms = objective.d_terms(GANParts(net, D(), diff, lambda x: None, rng), X0)
    t, eps = rng.draws
    ab = torch.cumprod(1 - diff.betas, 0)[t].float()[:, None]
    fake = x0_of(ab.sqrt() * X0 + (1 - ab).sqrt() * eps, t, ab)
    assert float(terms["d_real"]) == pytest.approx(float(F.softplus(-(X0 @ W + 0.1 * t.float())).mean()), rel=1e-5)
    assert float(terms["d_fake"]) == pytest.approx(float(F.softplus(fake @ W + 0.1 * t.float()).mean()), rel=1e-5)


def test_ddgan_terms_by_hand():
    diff, rng = discrete(), Recorder(1)
    p = parts(diff, rng)
    d = DDGANLoss().d_terms(p, X0, 0)
    t, n1, n2, z, npost = rng.draws
    x_prev, x_t = pair(diff, X0, t, n1, n2)
    x_fake = posterior(diff, G(x_t, t, z), x_t, t, npost)
    real = x_prev @ W + 0.1 * t + x_t @ V
    fake = x_fake @ W + 0.1 * t + x_t @ V
    assert set(d) == {"d_real", "d_fake"}
    assert float(d["d_real"]) == pytest.approx(float(F.softplus(-real).mean()), rel=1e-5)
    assert float(d["d_fake"]) == pytest.approx(float(F.softplus(fake).mean()), rel=1e-5)
    # the discriminator saw x_t (joint) and the pair's index t
    assert all(c[2] is not None and torch.equal(c[1], t) for c in p.discriminator.calls)

    rng.draws.clear()
    g = DDGANLoss().g_terms(p, X0, 0)
    t, n1, n2, z, npost = rng.draws
    _, x_t = pair(diff, X0, t, n1, n2)
    x_fake = posterior(diff, G(x_t, t, z), x_t, t, npost)
    assert float(g["g_adv"]) == pytest.approx(float(F.softplus(-(x_fake @ W + 0.1 * t + x_t @ V)).mean()), rel=1e-5)


@pytest.mark.parametrize("afd_form", ["paper", "released"])
def test_siddm_paper_terms_by_hand(afd_form):
    diff, rng = discrete(), Recorder(2)
    p = parts(diff, rng)
    obj = SIDDMLoss(lambda_afd=0.5, afd_form=afd_form, lambda_disc_reg=0.25)
    d = obj.d_terms(p, X0, 0)
    t, n1, n2, z, npost = rng.draws
    x_prev, x_t = pair(diff, X0, t, n1, n2)
    x_fake = posterior(diff, G(x_t, t, z), x_t, t, npost)
    assert float(d["d_real"]) == pytest.approx(float(F.softplus(-(x_prev @ W + 0.1 * t)).mean()), rel=1e-5)
    assert float(d["d_fake"]) == pytest.approx(float(F.softplus(x_fake @ W + 0.1 * t).mean()), rel=1e-5)
    # regulariser: D_aux(x_prev) = 2 x_prev reconstructs x0; entropy estimator C(x'_prev) = x'_prev + 1 predicts x_t
    assert float(d["disc_reg"]) == pytest.approx(0.25 * float(((2 * x_prev - X0) ** 2).mean()), rel=1e-5)
    assert float(d["entropy_c"]) == pytest.approx(0.5 * float(((x_t - (x_fake + 1)) ** 2).mean()), rel=1e-5)
    assert all(c[2] is None for c in p.discriminator.calls)  # marginal: D never sees x_t

    rng.draws.clear()
    g = obj.g_terms(p, X0, 0)
    t, n1, n2, z, npost, *rest = rng.draws
    _, x_t = pair(diff, X0, t, n1, n2)
    x_fake = posterior(diff, G(x_t, t, z), x_t, t, npost)
    b = diff.betas[t].float()[:, None]
    mean = (1 - b).sqrt() * x_fake + (b.sqrt() * rest[0] if afd_form == "released" else 0)
    assert len(rest) == (1 if afd_form == "released" else 0)
    assert float(g["g_adv"]) == pytest.approx(float(F.softplus(-(x_fake @ W + 0.1 * t)).mean()), rel=1e-5)
    assert float(g["afd_ce"]) == pytest.approx(0.5 * float(((mean - x_t) ** 2).mean()), rel=1e-5)
    assert float(g["afd_entropy"]) == pytest.approx(-0.5 * float(((x_t - (x_fake + 1)) ** 2).mean()), rel=1e-5)


def abar(t):
    return torch.cos((t + 0.008) / 1.008 * math.pi / 2).clamp(0, 1) ** 2


@pytest.mark.parametrize("joint", [False, True])
def test_siddm_released_terms_by_hand(joint):
    """The released toy code's objective: D scores x0 (real) and G's x0' (fake) at the EARLIER time
    t = max(t+ - 1/T, 0), sees x_{t+} only when joint; AFD re-diffuses the posterior sample."""
    T = 4
    proc, rng = CosineContinuousTime(T), Recorder(3)
    p = parts(proc, rng, z_uniform=True)
    obj = SIDDMReleasedLoss(afd_weight=0.7, joint=joint)
    d = obj.d_terms(p, X0, 0)
    tp, n1, n2, z, npost = rng.draws
    assert torch.all((tp >= 1e-4) & (tp <= 1)) and torch.all((z >= 0) & (z < 1))
    t = (tp - 1 / T).clamp(min=0)
    a_t, a_tp = abar(t)[:, None], abar(tp)[:, None]
    x_t = a_t.sqrt() * X0 + (1 - a_t).sqrt() * n1
    beta = 1 - a_tp / a_t
    x_tp = (1 - beta).sqrt() * x_t + beta.sqrt() * n2
    x0_fake = G(x_tp, tp, z)
    cond = x_tp @ V if joint else 0
    assert float(d["d_real"]) == pytest.approx(float(F.softplus(-(X0 @ W + 0.1 * t + cond)).mean()), rel=1e-5)
    assert float(d["d_fake"]) == pytest.approx(float(F.softplus(x0_fake @ W + 0.1 * t + cond).mean()), rel=1e-5)
    x_seen, t_seen, c_seen = p.discriminator.calls[0]
    assert torch.equal(x_seen, X0) and torch.allclose(t_seen, t) and (c_seen is not None) == joint

    rng.draws.clear()
    g = obj.g_terms(p, X0, 0)
    tp, n1, n2, z, npost, eps = rng.draws
    t = (tp - 1 / T).clamp(min=0)
    a_t, a_tp = abar(t)[:, None], abar(tp)[:, None]
    beta = 1 - a_tp / a_t
    x_tp = (1 - beta).sqrt() * (a_t.sqrt() * X0 + (1 - a_t).sqrt() * n1) + beta.sqrt() * n2
    x0_fake = G(x_tp, tp, z)
    m0 = a_t.sqrt() * beta / (1 - a_tp)
    m1 = (1 - beta).sqrt() * (1 - a_t) / (1 - a_tp)
    x_t_fake = m0 * x0_fake + m1 * x_tp + ((1 - a_t) / (1 - a_tp) * beta).sqrt() * npost
    afd = (((1 - beta).sqrt() * x_t_fake + beta.sqrt() * eps - x_tp) ** 2).mean()
    cond = x_tp @ V if joint else 0
    assert float(g["g_adv"]) == pytest.approx(float(F.softplus(-(x0_fake @ W + 0.1 * t + cond)).mean()), rel=1e-5)
    assert float(g["afd_ce"]) == pytest.approx(0.7 * float(afd), rel=1e-5)


def test_released_options_change_only_what_they_claim():
    """disc_input and disc_time switch exactly what D is given; the paper objective on the same process
    sees x'_prev at the pair's (later) time."""
    proc = CosineContinuousTime(4)
    seen = {}
    for name, obj in {"released": SIDDMReleasedLoss(afd_weight=0.0),
                      "x_prev@pair": SIDDMReleasedLoss(afd_weight=0.0, disc_input="x_prev", disc_time="pair")}.items():
        rng = Recorder(4)
        p = parts(proc, rng)
        obj.d_terms(p, X0, 0)
        tp, n1, n2, z, npost = rng.draws
        seen[name] = (p.discriminator.calls, tp, n1)
    (real, t_real, _), (fake, t_fake, _) = seen["released"][0]
    tp, n1 = seen["released"][1:]
    assert torch.equal(real, X0) and torch.allclose(t_real, (tp - 0.25).clamp(min=0)) and torch.equal(t_fake, t_real)
    (real2, t_real2, _), _ = seen["x_prev@pair"][0]
    tp2, n1b = seen["x_prev@pair"][1:]
    a_prev = abar((tp2 - 0.25).clamp(min=0))[:, None]
    x_prev = a_prev.sqrt() * X0 + (1 - a_prev).sqrt() * n1b
    torch.testing.assert_close(real2, x_prev)
    assert torch.equal(t_real2, tp2)


def test_r1_penalty_by_hand():
    """R1 of a linear D is γ/2·||W||² per sample (the gradient of x·W is W everywhere)."""
    diff = discrete()
    obj = DDGANLoss(r1_gamma=0.3)
    d = obj.d_terms(parts(diff, Recorder(5)), X0, 0)
    assert float(d["r1"]) == pytest.approx(0.3 / 2 * float((W ** 2).sum()), rel=1e-6)


def test_ensemble_terms_are_per_member_means():
    """With a stacked RandomSource the terms are [E] vectors: member k's value is what a single source
    seeded like member k gives."""
    diff = discrete()
    x0 = X0.expand(3, *X0.shape)
    stacked = RandomSource([torch.Generator().manual_seed(s) for s in (10, 11, 12)])

    def z_of(rng):
        return lambda x: rng.randn((*rng.batch_shape(x), 2))

    def G3(x, t, z):
        return 0.5 * x + z + 0.01 * t.float()[..., None]

    class D3:
        def __call__(self, x, t, x_cond=None, heads=("logit",)):
            return DiscriminatorOutput(logit=x @ W + 0.1 * t.float() + (0 if x_cond is None else x_cond @ V))

    d = DDGANLoss().d_terms(GANParts(G3, D3(), diff, z_of(stacked), stacked), x0, 0)
    assert d["d_real"].shape == (3,)
    for k, s in enumerate((10, 11, 12)):
        single = RandomSource.single(torch.Generator().manual_seed(s))
        ref = DDGANLoss().d_terms(GANParts(G3, D3(), diff, z_of(single), single), X0, 0)
        for name in ref:
            assert float(d[name][k]) == pytest.approx(float(ref[name]), rel=1e-6), (name, k)
