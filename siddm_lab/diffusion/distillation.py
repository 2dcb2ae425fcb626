"""Distillation objectives: progressive distillation (Salimans & Ho 2022) and one-step knowledge
distillation (Luhman & Luhman 2021) of a deterministic DDIM teacher.

Progressive distillation. A student with N steps learns to do in one DDIM step (η = 0) what the teacher does
in two: from z_t, the teacher steps t → t' → t'' (the student's plan has t and t'' = the next element, the
teacher's has the midpoint t' between them). With α = sqrt(ᾱ), σ = sqrt(1 − ᾱ), a DDIM step from t to s with
x0-prediction x̂ is z_s = α_s x̂ + σ_s (z_t − α_t x̂) / σ_t, so the x̂ that lands on the teacher's z_{t''} is

    x̃ = (z_{t''} − (σ_{t''} / σ_t) z_t) / (α_{t''} − (σ_{t''} / σ_t) α_t)

(the paper's Algorithm 2 target; at the last step t'' = −1, ᾱ = 1 and x̃ = z_{t''}). The student regresses x̃
with the paper's weights on the x-space error: ``truncated_snr`` max(SNR_t, 1) or ``snr_plus_one``
SNR_t + 1 (SNR = α²/σ²); both stay finite at the high-noise end where ε-weighting (SNR) vanishes.
After a round the student (N steps) becomes the teacher of the next (N/2 steps).

Knowledge distillation. The teacher's deterministic DDIM decoding x0 = D(x_T) of fixed x_T is computed once;
a student maps x_T → x0 in one call and regresses it (mean squared error).
"""

from __future__ import annotations

import torch

from siddm_lab.diffusion.rng import GLOBAL, RandomSource
from siddm_lab.diffusion.samplers import PredictFn
from siddm_lab.errors import ConfigError

WEIGHTINGS = ("truncated_snr", "snr_plus_one")


def _alpha_sigma(diffusion, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α_t, σ_t) per sample for integer timesteps ``t`` [B] (−1 = the data: α = 1, σ = 0), shaped like x."""
    ab = diffusion.alpha_bar(t).reshape(-1, *((1,) * (like.dim() - 1)))
    return ab.sqrt().to(like.dtype), (1 - ab).sqrt().to(like.dtype)


def _times(t, like: torch.Tensor) -> torch.Tensor:
    if isinstance(t, int):
        return torch.full((like.shape[0],), t, device=like.device, dtype=torch.long)
    return t.to(like.device).long()


def ddim_step_x0(diffusion, z_t: torch.Tensor, t, s, x0: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step t → s (ints or per-sample [B]; s = −1: the data) from z_t with the
    x0-prediction ``x0``: z_s = α_s x0 + σ_s (z_t − α_t x0) / σ_t."""
    a_t, s_t = _alpha_sigma(diffusion, _times(t, z_t), z_t)
    a_s, s_s = _alpha_sigma(diffusion, _times(s, z_t), z_t)
    return a_s * x0 + s_s * (z_t - a_t * x0) / s_t


def progressive_target(teacher: PredictFn, diffusion, z_t: torch.Tensor, t, t_mid, t_next,
                       clip_x0: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̃, z_{t''}): the student's x0 target for the step t → t_next and the teacher's two-step result
    (t → t_mid → t_next, deterministic DDIM with its own x0', optionally clipped). Times are ints or
    per-sample tensors [B]."""
    t, t_mid, t_next = (_times(v, z_t) for v in (t, t_mid, t_next))
    if not (bool((t > t_mid).all()) and bool((t_mid > t_next).all()) and bool((t_next >= -1).all())):
        raise ConfigError("a distillation step needs t > t_mid > t_next >= -1")
    z = z_t
    for a, b in ((t, t_mid), (t_mid, t_next)):
        x0 = teacher(z, a)[0]
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        z = ddim_step_x0(diffusion, z, a, b, x0)
    a_t, s_t = _alpha_sigma(diffusion, t, z_t)
    a_n, s_n = _alpha_sigma(diffusion, t_next, z_t)
    ratio = s_n / s_t
    return (z - ratio * z_t) / (a_n - ratio * a_t), z


def snr_weight(diffusion, t: torch.Tensor, weighting: str = "truncated_snr") -> torch.Tensor:
    """The x-space loss weight per sample at integer timesteps ``t``."""
    ab = diffusion.alphas_cumprod.to(t.device)[t.long()]
    snr = ab / (1 - ab)
    if weighting == "truncated_snr":
        return snr.clamp_min(1.0)
    if weighting == "snr_plus_one":
        return snr + 1.0
    raise ConfigError(f"distill.weighting={weighting!r} is unknown; allowed: {', '.join(WEIGHTINGS)}")


class ProgressiveDistillationLoss:
    """One round of progressive distillation over a student plan ``timesteps`` (decreasing, N steps) and the
    teacher's plan with the midpoints: the teacher's 2N steps are ``teacher_timesteps`` (decreasing), and the
    student's step i goes from teacher_timesteps[2i] to teacher_timesteps[2i+2] (−1 past the end).

    ``__call__(student, teacher, diffusion, x0, noise=None, index=None)``: z_t = q_sample(x0, t) at a random
    student step, the target x̃ of the two teacher steps (no gradient), the student's x0' at (z_t, t) and the
    weighted mean squared error."""

    def __init__(self, teacher_timesteps, weighting: str = "truncated_snr", clip_x0: float | None = None):
        ts = [int(t) for t in teacher_timesteps]
        if len(ts) < 2 or len(ts) % 2:
            raise ConfigError(f"progressive distillation halves an even number of teacher steps >= 2, got {len(ts)}")
        if any(a <= b for a, b in zip(ts, ts[1:])):
            raise ConfigError(f"teacher timesteps must be strictly decreasing, got {ts}")
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"distill.weighting={weighting!r} is unknown; allowed: {', '.join(WEIGHTINGS)}")
        self.teacher_timesteps = ts
        self.timesteps = ts[::2]  # the student's plan
        self.weighting, self.clip_x0 = weighting, clip_x0

    def step(self, i: int) -> tuple[int, int, int]:
        """(t, t_mid, t_next) of the student's step i."""
        ts = self.teacher_timesteps + [-1]
        return ts[2 * i], ts[2 * i + 1], ts[2 * i + 2]

    def __call__(self, student: PredictFn, teacher: PredictFn, diffusion, x0: torch.Tensor,
                 noise: torch.Tensor | None = None, index: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """``index`` [B]: the student step of every sample (default uniform)."""
        if index is None:
            index = torch.randint(0, len(self.timesteps), (x0.shape[0],), generator=generator)
        plan = torch.tensor(self.teacher_timesteps + [-1])
        index = index.cpu().long()
        t, t_mid, t_next = (plan[2 * index + k].to(x0.device) for k in range(3))
        if noise is None:
            noise = diffusion.noise_like(x0, t, GLOBAL if generator is None else RandomSource.single(generator))
        z_t = diffusion.q_sample(x0, t, noise)
        with torch.no_grad():
            target, _ = progressive_target(teacher, diffusion, z_t, t, t_mid, t_next, self.clip_x0)
        x0_student = student(z_t, t)[0]
        w = snr_weight(diffusion, t, self.weighting).to(x0.dtype)
        err = (x0_student - target).pow(2).flatten(1).mean(1)
        return (w * err).mean()


def halving_plans(teacher_timesteps, rounds: int) -> list[list[int]]:
    """The teacher plan of each round of progressive distillation: round 0's is ``teacher_timesteps``
    (decreasing, 2^rounds · N_final steps), each next one every other timestep of the previous (the
    previous round's student plan). The students of the rounds take len/2 of their teacher's steps."""
    ts = [int(t) for t in teacher_timesteps]
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"distill.rounds={rounds!r} is invalid: expected a positive integer (halvings)")
    if len(ts) % (2 ** rounds):
        allowed = [k for k in range(1, 11) if len(ts) % (2 ** k) == 0]
        raise ConfigError(f"{rounds} halvings need a teacher plan of a multiple of 2^{rounds} = {2 ** rounds} steps; "
                          f"the teacher's {len(ts)} steps allow rounds in {allowed or 'none (an odd step count)'}")
    plans = [ts]
    for _ in range(rounds - 1):
        plans.append(plans[-1][::2])
    return plans


PAIRS_STREAM = 0x4B44  # the pairs' noise has its own stream: an evaluation seed never redraws training inputs


def pairs_generator(seed: int) -> torch.Generator:
    """The CPU generator of the knowledge-distillation pairs' x_T for ``distill.pairs_seed``: seeded through
    ``numpy.random.SeedSequence([seed, PAIRS_STREAM])``, so that sampling the student with any evaluation seed
    (``torch.Generator().manual_seed(s)``) draws fresh noise, not the x_T it was trained on."""
    import numpy as np

    state = int(np.random.SeedSequence([int(seed), PAIRS_STREAM]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(state)


@torch.no_grad()
def knowledge_pairs(teacher: PredictFn, sampler, n: int, shape, generator: torch.Generator,
                    batch_size: int = 500, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_T, x0) of ``n`` teacher decodings: x_T ~ N(0, I) from ``generator`` (on CPU), x0 the deterministic
    ``sampler``'s result (a ``DDIMSampler`` with η = 0: Luhman & Luhman's teacher map). Returned on CPU."""
    if getattr(sampler, "eta", 0.0) != 0.0:
        raise ConfigError("knowledge distillation needs a deterministic teacher map: a DDIM sampler with eta=0")
    if n < 1:
        raise ConfigError(f"distill.num_pairs must be >= 1, got {n}")
    xs, x0s = [], []
    for i in range(0, n, batch_size):
        x_T = torch.randn((min(batch_size, n - i), *shape), generator=generator)
        xs.append(x_T)
        x0s.append(sampler.sample(teacher, x_T.to(device) if device is not None else x_T).cpu())
    return torch.cat(xs), torch.cat(x0s)


class KnowledgeDistillationLoss:
    """Luhman & Luhman (2021): a student that maps x_T to x0 in one call regresses the teacher's decoding:
    L = E || f_student(x_T, T−1) − D_teacher(x_T) ||² over cached pairs (the student predicts x0 at t = T−1)."""

    def __call__(self, student: PredictFn, x_T: torch.Tensor, x0_teacher: torch.Tensor, T: int) -> torch.Tensor:
        t = torch.full((x_T.shape[0],), T - 1, device=x_T.device, dtype=torch.long)
        return (student(x_T, t)[0] - x0_teacher).pow(2).flatten(1).mean(1).mean()
