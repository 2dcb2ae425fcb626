"""Gamma noise: the Gamma-DDPM forward process (Nachmani, San Roman, Wolf 2021; seed report §2.3).

With the same β schedule as the Gaussian process and a scale θ0,

    θ_t = sqrt(ᾱ_t) θ0,   k_t = β_t / (ᾱ_t θ0²),   k̄_t = Σ_{i≤t} k_i   (so k̄_t θ_t² = 1 − ᾱ_t),
    x_t = sqrt(ᾱ_t) x0 + (ḡ_t − k̄_t θ_t),   ḡ_t ~ Γ(shape k̄_t, scale θ_t).

The noise has mean 0 and variance 1 − ᾱ_t, as the Gaussian's, and skewness 2 / sqrt(k̄_t). The denoiser
regresses the standardised noise ε = (ḡ_t − k̄_t θ_t) / sqrt(1 − ᾱ_t) = (Γ(k̄_t, 1) − k̄_t) / sqrt(k̄_t), so
every parameterisation (ε, x0, v) and ``to_x0_eps`` are the Gaussian process's. Ancestral sampling keeps
DDPM's mean and variance and replaces the Gaussian z by centred unit-variance Gamma noise
(Γ(k, 1) − k) / sqrt(k) of the shape the forward chain adds over the step (k_t; k̄_t − k̄_s over a skip
t -> s); x_T is centred unit-variance Gamma noise of shape k̄_{T-1}.

Between two timesteps s < t the forward chain adds independent Gamma noise of the same scale,
ḡ_t = (θ_t/θ_s) ḡ_s + Γ(k̄_t − k̄_s, θ_t), so the exact posterior is a Beta thinning (``GammaDDIMSampler``):

    ḡ_s | ḡ_t, x0 = (θ_s/θ_t) ḡ_t B,   B ~ Beta(k̄_s, k̄_t − k̄_s),   ḡ_t = x_t − sqrt(ᾱ_t) x0 + k̄_t θ_t.

It keeps the Gamma marginals q(x_s | x0) over any sub-sequence; its mean is DDPM's posterior mean and its
variance DDPM's β̃ up to a factor k̄_t/(k̄_t + 1). The seed report's Gamma-DDIM is the case where every step
of the plan satisfies its constraint k_{t+1} = Σ_{i≤t} k_i, i.e. k̄ halves at every step (B ~ Beta(k̄_s, k̄_s)).

Small θ0 makes every shape large and the process nearly Gaussian (θ0 = 0.001, the public config, gives
k_0 = β_0/(ᾱ_0 θ0²) = 100 with the linear schedule: skewness 0.2 at t = 0 and below 0.01 from t ≈ 40).
Shapes reach 1/θ0² · (1/ᾱ_T − 1) (2.5e10 for θ0 = 0.001, T = 1000): draws are made in float64 on the CPU.
"""

from __future__ import annotations

import math

import torch

from siddm_lab.diffusion.gaussian import GaussianDiffusion
from siddm_lab.diffusion.rng import GLOBAL, RandomSource
from siddm_lab.diffusion.samplers import StepSampler, _alpha_bar
from siddm_lab.errors import ConfigError


def standard_gamma(concentration: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Γ(concentration, 1) draws (float64, CPU) from ``generator`` (default: the global RNG).

    ``torch._standard_gamma`` takes no generator: a seed is drawn from ``generator`` and the global CPU RNG
    is forked around the draw, so that the same generator state gives the same numbers."""
    c = concentration.detach().to("cpu", torch.float64)
    if generator is None:
        return torch._standard_gamma(c)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch._standard_gamma(c)


def centred_gamma(shape: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(Γ(k, 1) − k) / sqrt(k): centred, unit-variance Gamma noise of shape parameters ``k`` (float64)."""
    k = shape.detach().to("cpu", torch.float64)
    return (standard_gamma(k, generator) - k) / k.sqrt()


class GammaDiffusion(GaussianDiffusion):
    """The Gaussian process's coefficients with Gamma noise (module docstring). ``theta0`` > 0."""

    noise = "gamma"

    def __init__(self, betas: torch.Tensor, theta0: float = 0.001):
        if isinstance(theta0, bool) or not isinstance(theta0, (int, float)) or not 0 < theta0 < math.inf:
            raise ConfigError(f"noise.theta0={theta0!r} is invalid: expected a finite number > 0")
        super().__init__(betas)
        self.theta0 = float(theta0)
        k = self.betas / (self.alphas_cumprod * self.theta0**2)
        for name, value in {"gamma_k": k, "gamma_k_cumsum": torch.cumsum(k, 0),
                            "gamma_theta": self.alphas_cumprod.sqrt() * self.theta0}.items():
            self.register_buffer(name, value, persistent=False)

    @classmethod
    def from_schedule(cls, name: str, T: int, theta0: float = 0.001, **kwargs) -> GammaDiffusion:
        from siddm_lab.diffusion.schedules import make_betas

        return cls(make_betas(name, T, **kwargs), theta0)

    def _draw(self, k: torch.Tensor, like: torch.Tensor, rng: RandomSource) -> torch.Tensor:
        gens = rng.generators
        if gens is None:
            z = centred_gamma(k)
        elif not rng.stacked:
            z = centred_gamma(k, gens[0])
        else:
            z = torch.stack([centred_gamma(k[m], g) for m, g in enumerate(gens)])
        return z.to(like.device, like.dtype)

    def noise_like(self, x0: torch.Tensor, t: torch.Tensor, rng: RandomSource = GLOBAL) -> torch.Tensor:
        """The standardised forward noise ε of q(x_t | x0) for every element: (Γ(k̄_t, 1) − k̄_t) / sqrt(k̄_t)."""
        k = self.gamma_k_cumsum[t.cpu().long()]
        k = k.reshape(*t.shape, *((1,) * (x0.dim() - t.dim()))).expand(x0.shape)
        return self._draw(k, x0, rng)

    def step_noise(self, x: torch.Tensor, t: int, generator: torch.Generator | None = None,
                   s: int | None = None) -> torch.Tensor:
        """The reverse step's noise from timestep t to s: centred unit-variance Gamma of the shape the forward
        chain adds between them, k̄_t − k̄_s (k_t for s = t−1 or s unknown)."""
        skip = s is not None and 0 <= s < t - 1
        k = (self.gamma_k_cumsum[t] - self.gamma_k_cumsum[s] if skip else self.gamma_k[t]).expand(x.shape)
        return centred_gamma(k, generator).to(x.device, x.dtype)

    def prior_sample(self, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_T: centred unit-variance Gamma noise of shape k̄_{T−1} (the standardised forward noise at T−1, as
        the Gaussian process starts from N(0, I))."""
        k = self.gamma_k_cumsum[self.num_timesteps - 1].expand(tuple(shape))
        return centred_gamma(k, generator).float()

    def q_sample_pairs(self, *args, **kwargs):
        raise ConfigError("noise=gamma is a DDPM option: the diffusion GANs' pair objectives (SIDDM, DDGAN) are "
                          "defined for Gaussian noise; use noise=gaussian")


def beta_draw(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Beta(a, b) draws (float64, CPU) as X / (X + Y), X ~ Γ(a, 1), Y ~ Γ(b, 1) from ``generator``."""
    x, y = standard_gamma(a, generator), standard_gamma(b, generator)
    return x / (x + y)


GAMMA_CONSTRAINTS = ("doubling",)


class GammaDDIMSampler(StepSampler):
    """Gamma-noise sampling with the exact posterior of the Gamma forward chain, over any plan (module
    docstring): x_t -> x_s keeps q(x_s | x0) Gamma, with shape k̄_s and scale θ_s, whatever the gap t - s.

    ``constraint="doubling"`` is the seed report's Gamma-DDIM: consecutive plan steps must satisfy
    k_{t+1} = Σ_{i≤t} k_i, i.e. k̄_{τ_i} = 2 k̄_{τ_{i+1}} (within ``constraint_rtol``). The plan is then built
    from T-1 by halving k̄ (``steps`` null: as many steps as the schedule allows; an integer: the first
    ``steps``), or an explicit plan (``subsequence={name: explicit, ...}``) is checked. Because
    k̄_t = 1 / (θ0² SNR_t), the constraint halves the SNR's inverse at every step: it allows only
    about log2(k̄_{T-1} / k̄_0) steps (28 on the linear T = 1000 schedule); asking for more is refused.
    ``x0'`` below the noise's support (ḡ_t < 0, possible with a predicted x0) is clamped onto it.
    """

    name = "gamma_ddim"
    stochastic = True

    def __init__(self, diffusion: GaussianDiffusion, steps: int | None = None, subsequence=None,
                 clip_x0: float | None = None, constraint: str | None = None, constraint_rtol: float = 0.05):
        if getattr(diffusion, "noise", "gaussian") != "gamma":
            raise ConfigError(f"sampler=gamma_ddim samples Gamma noise; this process has "
                              f"{getattr(diffusion, 'noise', 'gaussian')} noise: use sampler=ddim or sampler=ddpm")
        if constraint is not None and constraint not in GAMMA_CONSTRAINTS:
            raise ConfigError(f"sampler.constraint={constraint!r} is unknown; allowed: null, "
                              f"{', '.join(GAMMA_CONSTRAINTS)}")
        if isinstance(constraint_rtol, bool) or not isinstance(constraint_rtol, (int, float)) \
                or not 0 < constraint_rtol < 1:
            raise ConfigError(f"sampler.constraint_rtol={constraint_rtol!r} is invalid: expected a number in (0, 1)")
        self.constraint, self.constraint_rtol = constraint, float(constraint_rtol)
        spec = dict(subsequence or {})
        explicit = spec.get("name") == "explicit"
        if constraint is None or explicit:
            super().__init__(diffusion, steps, subsequence, clip_x0)
        else:
            if spec.get("name", "uniform") != "uniform":
                raise ConfigError(f"sampler.constraint=doubling builds its own plan; subsequence={spec['name']} "
                                  f"would be ignored: leave the subsequence at its default (uniform) or give an "
                                  f"explicit plan to check")
            super().__init__(diffusion, None, {"name": "explicit", "timesteps": [diffusion.num_timesteps - 1]},
                             clip_x0)
            self.timesteps = self.doubling_plan(steps)
            self.steps, self.subsequence = len(self.timesteps), "gamma_doubling"
        if constraint is not None:
            self.check_constraint(self.timesteps)

    def _kbar(self) -> torch.Tensor:
        """k̄ as a float64 CPU copy, made once (the step's coefficients are host-side scalars)."""
        kbar = getattr(self, "_kbar_cpu", None)
        if kbar is not None:
            return kbar
        kbar = self.diffusion.gamma_k_cumsum.detach().to("cpu", torch.float64)
        if not torch.isfinite(kbar).all():
            raise ConfigError("the Gamma shapes k̄_t are not finite (ᾱ_t = 0 at the end of the schedule): Gamma "
                              "noise needs ᾱ_{T-1} > 0; use a schedule without zero terminal SNR")
        self._kbar_cpu = kbar
        return kbar

    def max_doubling_steps(self) -> int:
        """The most steps a plan from T-1 can take under the constraint: k̄ halves at each of them."""
        return len(self.doubling_plan(None))

    def doubling_plan(self, steps: int | None) -> list[int]:
        """From T-1, each next timestep the one whose k̄ is nearest half the current one, while that is within
        ``constraint_rtol`` of a halving; the first ``steps`` of them (null: all)."""
        kbar = self._kbar()
        plan = [len(kbar) - 1]
        while plan[-1] > 0:
            t = plan[-1]
            ratio = kbar[t] / kbar[:t]
            s = int(torch.argmin((ratio.log2() - 1).abs()))
            if abs(float(ratio[s]) / 2 - 1) > self.constraint_rtol:
                break
            plan.append(s)
        if steps is not None:
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise ConfigError(f"sampler.steps={steps!r} is invalid: expected null or a positive integer")
            if steps > len(plan):
                span = float(kbar[-1] / kbar[0])
                raise ConfigError(
                    f"sampler.steps={steps} is impossible under the Gamma-DDIM constraint k_(t+1) = sum_(i<=t) k_i: "
                    f"k̄ doubles at every step, so {steps} steps need k̄ to grow by 2^{steps - 1} = "
                    f"{2.0 ** (steps - 1):.3g}, and this schedule's k̄ spans only {span:.3g} from t=0 to T-1; "
                    f"allowed: 1..{len(plan)} (or sampler.constraint=null for any plan)")
            plan = plan[:steps]
        return plan

    def check_constraint(self, timesteps) -> None:
        """Refuse a plan whose consecutive steps do not halve k̄ (within ``constraint_rtol``)."""
        kbar = self._kbar()
        ts = list(timesteps)
        for t, s in zip(ts, ts[1:]):
            if t == s:
                continue
            ratio = float(kbar[t] / kbar[s])
            if abs(ratio / 2 - 1) > self.constraint_rtol:
                raise ConfigError(
                    f"the plan breaks the Gamma-DDIM constraint k_(t+1) = sum_(i<=t) k_i at the step {t} -> {s}: "
                    f"k̄_{t} / k̄_{s} = {ratio:.4g}, allowed 2 ± {2 * self.constraint_rtol:.3g} "
                    f"(sampler.constraint_rtol={self.constraint_rtol}); leave the plan to the sampler "
                    f"(subsequence at its default) or set sampler.constraint=null")

    def settings(self) -> dict:
        return {**super().settings(), "constraint": self.constraint}

    def shapes(self, t: int, s: int) -> tuple[float, float]:
        """(k̄_s, k̄_t − k̄_s): the Beta parameters of the update t -> s (s >= 0)."""
        kbar = self._kbar()
        return float(kbar[s]), float(kbar[t] - kbar[s])

    def step_noise(self, x_t: torch.Tensor, t: int, s: int, generator: torch.Generator | None = None):
        """B ~ Beta(k̄_s, k̄_t − k̄_s) for every element (float64, on x's device)."""
        a, b = self.shapes(t, s)
        shape = tuple(x_t.shape)
        B = beta_draw(torch.full(shape, a, dtype=torch.float64), torch.full(shape, b, dtype=torch.float64),
                      generator)
        return B.to(x_t.device)

    def step(self, x_t, t: int, s: int, x0, eps, noise=None):
        if s < 0:
            return x0
        if t == s:
            return x_t
        if noise is None:
            noise = self.step_noise(x_t, t, s)
        ab_t, ab_s = _alpha_bar(self.diffusion, t), _alpha_bar(self.diffusion, s)
        theta_t, theta_s = float(ab_t.sqrt()) * self.diffusion.theta0, float(ab_s.sqrt()) * self.diffusion.theta0
        kbar = self._kbar()
        kt, ks = float(kbar[t]), float(kbar[s])
        x0d = x0.to(torch.float64)
        g_t = (x_t.to(torch.float64) - float(ab_t.sqrt()) * x0d + kt * theta_t).clamp_min(0)
        g_s = (theta_s / theta_t) * g_t * noise.to(x_t.device, torch.float64)
        return (float(ab_s.sqrt()) * x0d + g_s - ks * theta_s).to(x_t.dtype)
