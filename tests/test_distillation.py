"""Progressive distillation's target x̃ (Salimans & Ho 2022, Algorithm 2) against a hand computation, and a
student that predicts it reproducing the teacher's DDIM chain exactly on an analytic model."""

from __future__ import annotations

import math

import pytest
import torch

from siddm_lab.diffusion import DDIMSampler, GaussianDiffusion, sample_loop
from siddm_lab.diffusion.distillation import (
    ProgressiveDistillationLoss,
    ddim_step_x0,
    progressive_target,
    snr_weight,
)
from siddm_lab.errors import ConfigError
from tests.test_fixed_point import _gmm_predict


@pytest.fixture(scope="module")
def diff():
    return GaussianDiffusion.from_schedule("linear", 1000)


def test_target_by_hand(diff):
    """Two teacher DDIM steps written out in float64 from the definitions, then x̃ solved by hand."""
    teacher = _gmm_predict(diff, s2=0.05)
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t, tm, tn = 600, 400, 200
    ab = diff.alphas_cumprod.double()
    zz = z.clone()
    for a, b in ((t, tm), (tm, tn)):
        eps = teacher(zz.float(), torch.full((8,), a))[1].double()
        x0 = (zz - (1 - ab[a]).sqrt() * eps) / ab[a].sqrt()
        zz = ab[b].sqrt() * x0 + (1 - ab[b]).sqrt() * eps
    r = ((1 - ab[tn]) / (1 - ab[t])).sqrt()
    by_hand = (zz - r * z) / (ab[tn].sqrt() - r * ab[t].sqrt())
    target, z_next = progressive_target(teacher, diff, z.float(), t, tm, tn)
    torch.testing.assert_close(z_next.double(), zz, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(target.double(), by_hand, rtol=1e-4, atol=1e-4)
    # one student DDIM step with x̂ = x̃ lands on the teacher's two-step result
    torch.testing.assert_close(ddim_step_x0(diff, z.float(), t, tn, target), z_next, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n_teacher", [2, 8, 20])
def test_a_student_that_predicts_the_target_reproduces_the_teacher_chain(diff, n_teacher):
    """N = n_teacher/2 student steps with x̂ = x̃ equal the teacher's deterministic DDIM over its 2N steps
    (uniform plan), including the last step to the data (t'' = −1, x̃ = the teacher's output)."""
    teacher = _gmm_predict(diff, s2=0.05)
    ddim = DDIMSampler(diff, 0.0, steps=n_teacher)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    ref = sample_loop(teacher, ddim, x_T, ddim.timesteps)
    loss = ProgressiveDistillationLoss(ddim.timesteps)
    z = x_T
    for i in range(len(loss.timesteps)):
        t, tm, tn = loss.step(i)
        target, _ = progressive_target(teacher, diff, z, t, tm, tn)
        z = ddim_step_x0(diff, z, t, tn, target)
    torch.testing.assert_close(z, ref, rtol=1e-3, atol=1e-3)
    assert loss.timesteps == ddim.timesteps[::2]


def test_the_loss_is_zero_for_the_oracle_student_and_weighted_per_sample(diff):
    teacher = _gmm_predict(diff, s2=0.05)
    loss = ProgressiveDistillationLoss(DDIMSampler(diff, 0.0, steps=8).timesteps, weighting="snr_plus_one")
    plan = loss.teacher_timesteps + [-1]
    index = torch.tensor([0, 1, 2, 3] * 4)

    def oracle(z, t):  # knows each sample's step from its t
        tl = t.tolist()
        pos = [plan.index(v) for v in tl]
        tm = torch.tensor([plan[p + 1] for p in pos])
        tn = torch.tensor([plan[p + 2] for p in pos])
        return progressive_target(teacher, diff, z, t, tm, tn)

    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(2))
    assert float(loss(oracle, teacher, diff, x0, index=index)) < 1e-8
    zero = lambda z, t: (torch.zeros_like(z), None)  # noqa: E731
    assert float(loss(zero, teacher, diff, x0, index=index)) > 0.1
    t = torch.tensor([999, 500, 10])
    ab = diff.alphas_cumprod[t]
    snr = ab / (1 - ab)
    torch.testing.assert_close(snr_weight(diff, t, "truncated_snr"), snr.clamp_min(1))
    torch.testing.assert_close(snr_weight(diff, t, "snr_plus_one"), snr + 1)
    assert math.isclose(float(snr_weight(diff, t, "truncated_snr")[0]), 1.0)


def test_a_generator_draws_both_the_steps_and_the_noise(diff):
    # the same generator seed gives the same loss whatever the global RNG holds, and it equals the loss
    # with the step indices and the noise drawn from that generator in that order
    teacher = _gmm_predict(diff, s2=0.05)
    loss = ProgressiveDistillationLoss(DDIMSampler(diff, 0.0, steps=8).timesteps)
    student = lambda z, t: (0.5 * z, None)  # noqa: E731
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    a = loss(student, teacher, diff, x0, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    b = loss(student, teacher, diff, x0, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    g = torch.Generator().manual_seed(5)
    index = torch.randint(0, len(loss.timesteps), (32,), generator=g)
    noise = torch.randn(32, 2, generator=g)
    torch.testing.assert_close(a, loss(student, teacher, diff, x0, noise=noise, index=index))
    assert not torch.equal(a, loss(student, teacher, diff, x0, generator=torch.Generator().manual_seed(6)))


@pytest.mark.parametrize("steps,kwargs,message", [
    ([9, 5, 1], {}, "even number of teacher steps"),
    ([5, 9], {}, "even number|strictly decreasing"),
    ([9, 9, 5, 1], {}, "strictly decreasing"),
    ([9, 5], {"weighting": "snr"}, "distill.weighting='snr' is unknown"),
])
def test_bad_distillation_settings(steps, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ProgressiveDistillationLoss(steps, **kwargs)
