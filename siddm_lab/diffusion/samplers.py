"""Samplers: one interface over every way of drawing samples from a trained model.

A sampler is independent of the network (the sampler is not the model). Every sampler is a ``Sampler``:
built from the ``sampler`` config group bound to a model's process (``diffusion=``), it declares what it
needs of a model (``requires``: capabilities such as a deterministic (x0', ε') denoiser or a diffusion
GAN's generator chain), reports ``nfe`` and ``settings()``, and draws with one signature,

    ``sample(denoiser, x_T, rng=None, progress=False) -> x0``,

where ``denoiser`` (a ``Denoiser``) is what the model offers: ``x0_eps(x_t, t) -> (x0', ε')`` (a trained
DDPM's denoiser converted by ``GaussianDiffusion.to_x0_eps``, or a discrete-time GAN generator's x0'),
``x0(x_t, t) -> x0'`` (a GAN generator drawing its own latent), its own plan (a distilled student) and the
process. ``check_sampler`` is the one place that tells whether a sampler suits a model, with one message.
Adding a sampler is one class (a subclass of ``Sampler``, which registers itself by ``name``) and one YAML.

Step updates use the actual next element ``s`` of the plan (``s = -1`` is the clean data, ᾱ_{-1} := 1,
``GaussianDiffusion.alpha_bar``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from siddm_lab.diffusion import subsequences as _subsequences
from siddm_lab.diffusion.gamma import beta_draw
from siddm_lab.diffusion.gaussian import VARIANCE_TYPES, GaussianDiffusion
from siddm_lab.diffusion.rng import RandomSource
from siddm_lab.errors import ConfigError

PredictFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
X0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# What a sampler may need of a model, in the words of the one refusal message.
REQUIREMENTS = {
    "x0_eps": "a model's (x0', ε') prediction at discrete timesteps (a DDPM/DDIM checkpoint, or a single "
              "discrete-time diffusion GAN)",
    "deterministic": "a deterministic denoiser (a DDPM/DDIM checkpoint; a diffusion GAN's generator draws a latent "
                     "at every step)",
    "generator": "a diffusion GAN's generator chain (a SIDDM/DDGAN checkpoint)",
    "discrete_time": "a discrete-time process",
    "gaussian_noise": "Gaussian noise",
    "gamma_noise": "Gamma noise (a model trained with noise=gamma)",
    "own_plan": "a model with its own sampling plan (a siddm-distill checkpoint)",
}


@dataclass(frozen=True)
class Denoiser:
    """What a sampler sees of a model (``DiffusionModule.denoiser``).

    Args:
        diffusion: the model's process.
        x0_eps: ``(x_t, t) -> (x0', ε')`` at integer timesteps, or None.
        x0: ``(x_t, t) -> x0'`` of a diffusion GAN's generator (its latent drawn inside), or None.
        deterministic: whether ``x0_eps`` is a function of (x_t, t) alone.
        own_sampler: ``() -> Sampler``: the model's own plan (a distilled student), or None.
        description: the model in the words of a refusal, a noun phrase ("this DDPM (a denoiser)").
    """

    diffusion: object
    x0_eps: PredictFn | None = None
    x0: X0Fn | None = None
    deterministic: bool = True
    own_sampler: Callable[[], Sampler] | None = None
    description: str = "this model"

    @property
    def capabilities(self) -> frozenset[str]:
        caps = {"continuous_time" if getattr(self.diffusion, "continuous", False) else "discrete_time",
                f"{getattr(self.diffusion, 'noise', 'gaussian')}_noise"}
        if self.x0_eps is not None:
            caps.add("x0_eps")
            if self.deterministic:
                caps.add("deterministic")
        if self.x0 is not None:
            caps.add("generator")
        if self.own_sampler is not None:
            caps.add("own_plan")
        return frozenset(caps)


def as_denoiser(denoiser, diffusion, generator: bool = False) -> Denoiser:
    """``denoiser`` as a ``Denoiser``: one already, or a bare function of (x_t, t) (a deterministic
    ``(x0', ε')`` predictor, or with ``generator`` a GAN generator's ``x0'``)."""
    if isinstance(denoiser, Denoiser):
        return denoiser
    if callable(denoiser):
        if generator:
            return Denoiser(diffusion, x0=denoiser, deterministic=False)
        return Denoiser(diffusion, x0_eps=denoiser)
    raise TypeError(f"a sampler draws from a Denoiser or a function (x_t, t) -> (x0', eps'), got "
                    f"{type(denoiser).__name__}")


def as_random_source(rng) -> RandomSource:
    """Where a sampler draws its noise: a ``RandomSource``, a ``torch.Generator`` (one model) or None (the
    global RNG)."""
    if rng is None:
        return RandomSource()
    if isinstance(rng, torch.Generator):
        return RandomSource.single(rng)
    if isinstance(rng, RandomSource):
        return rng
    raise TypeError(f"rng must be a RandomSource, a torch.Generator or None, got {type(rng).__name__}")


def _torch_generator(rng: RandomSource) -> torch.Generator | None:
    """The single generator of a one-model ``RandomSource`` (None: the global RNG)."""
    if rng.generators is None:
        return None
    if rng.stacked:
        raise ConfigError("a step sampler draws one model's samples; an ensemble samples with its generator chain "
                          "(sampler=generator)")
    return rng.generators[0]


SAMPLER_CLASSES: dict[str, type] = {}


class Sampler:
    """The interface of every sampler (module docstring). Subclasses set ``name`` (the config option), the
    class-level ``requires`` (what every instance needs; ``requirements()`` may add what settings need) and
    ``stochastic``, and implement ``nfe``, ``settings`` and ``sample``; a sampler that depends on the model it
    samples (a student's own plan) overrides ``resolve``."""

    name = "sampler"
    requires: frozenset[str] = frozenset()
    stochastic = True
    abstract = True  # not a config option itself

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("abstract", False) and "name" in cls.__dict__:
            SAMPLER_CLASSES[cls.name] = cls

    def __init__(self, diffusion):
        self.diffusion = diffusion

    @property
    def nfe(self) -> int:
        """Network evaluations per sample."""
        raise NotImplementedError

    def requirements(self) -> frozenset[str]:
        """What this sampler, with its settings, needs of a model (``REQUIREMENTS`` keys)."""
        return frozenset(self.requires)

    def settings(self) -> dict:
        """What ran, for metrics.json and tables: sampler, NFE, sequential depth, the settings."""
        return {"sampler": self.name, "nfe": self.nfe, "depth": self.nfe}

    def resolve(self, denoiser: Denoiser) -> Sampler:
        """The sampler that runs for ``denoiser`` (itself, unless it takes its plan from the model)."""
        return self

    def sample(self, denoiser, x_T: torch.Tensor, rng=None, progress: bool = False) -> torch.Tensor:
        """x0 from x_T (``denoiser``: a ``Denoiser`` or a bare predictor, see ``as_denoiser``; ``rng``: see
        ``as_random_source``)."""
        raise NotImplementedError


def check_sampler(sampler, denoiser: Denoiser, extra: Sequence[str] = (), what: str | None = None,
                  hint: str | None = None) -> None:
    """Refuse a sampler that ``denoiser``'s model cannot serve, with the one message: what is missing, what
    the model is, and the samplers that fit it. ``extra``: what the use adds (e.g. a decoding mode needs a
    deterministic decoder), named ``what``; ``hint``: what to do when no sampler fits. ``sampler`` may be a
    sampler class (what every instance needs: checked before its settings are)."""
    need = set(sampler.requires if isinstance(sampler, type) else sampler.requirements()) | set(extra)
    caps = denoiser.capabilities
    missing = [k for k in REQUIREMENTS if k in need - caps] + sorted(need - caps - set(REQUIREMENTS))
    if not missing:
        return
    fit = [name + (" (with other settings)" if name == sampler.name else "") for name, cls in SAMPLER_CLASSES.items()
           if set(cls.requires) | set(extra) <= caps]
    who = f"sampler={sampler.name}" + (f" with {what}" if what else "")
    noise = getattr(denoiser.diffusion, "noise", "gaussian")
    needs = "; ".join(REQUIREMENTS.get(k, k) + (f" (its process has {noise} noise)" if k.endswith("_noise") else "")
                      for k in missing)
    fits = ", ".join(fit) if fit else "none" + (f" ({hint})" if hint else "")
    raise ConfigError(f"{who} needs {needs}, which {denoiser.description} does not offer. Samplers that fit it"
                      f"{f' with {what}' if what else ''}: {fits}")


def prepare_sampler(sampler, denoiser: Denoiser, extra: Sequence[str] = (), what: str | None = None,
                    hint: str | None = None):
    """``check_sampler``, then the sampler that runs (``Sampler.resolve``)."""
    check_sampler(sampler, denoiser, extra, what, hint)
    resolved = sampler.resolve(denoiser)
    if resolved is not sampler:
        check_sampler(resolved, denoiser, extra, what, hint)
    return resolved


def _add_noise(mean: torch.Tensor, std: float, noise: torch.Tensor | None) -> torch.Tensor:
    """mean + std·z (z = ``noise`` or fresh N(0, I)); the mean alone when std = 0."""
    if std <= 0:
        return mean
    return mean + std * (torch.randn_like(mean) if noise is None else noise)


# The plain sequences, kept under their sampler-side names (the sub-sequence module holds the maths).
full_timesteps = _subsequences.full
uniform_timesteps = _subsequences.uniform


class StepSampler(Sampler):
    """A reverse-process sampler: an update rule (``step``) over a timestep plan, on a model's (x0', ε').

    The plan is S = ``steps`` timesteps of the sub-sequence ``subsequence`` (a ``make_timesteps``
    spec, the ``subsequence`` config group; default uniform). ``steps`` null means the sub-sequence's
    own length: every timestep for a spacing (uniform, leading, linspace, trailing, quadratic), the
    fixed length of exponential / last_k / first_k_last_k / explicit, which take no S. ``clip_x0``
    clips the model's x0' to [-c, c] and re-derives ε' from the clipped x0'.

    The same object serves periodic evaluation, the end-of-training evaluation and ``siddm-sample``
    (``conf/sampler``: a partial bound to the model's process with ``diffusion=``).
    """

    name = "step"
    abstract = True
    requires = frozenset({"x0_eps", "discrete_time"})
    stochastic = True

    def __init__(self, diffusion: GaussianDiffusion, steps: int | None = None, subsequence=None,
                 clip_x0: float | None = None):
        if clip_x0 is not None and (isinstance(clip_x0, bool) or not isinstance(clip_x0, (int, float))
                                    or clip_x0 <= 0):
            raise ConfigError(f"sampler.clip_x0={clip_x0!r} is invalid: expected null or a positive number")
        super().__init__(diffusion)
        self.clip_x0 = clip_x0
        self.steps = steps
        self.subsequence, self.timesteps = _subsequences.plan(diffusion.num_timesteps, steps, subsequence,
                                                              getattr(diffusion, "alphas_cumprod", None))

    @property
    def nfe(self) -> int:
        """Network evaluations per sample: one per element of the plan."""
        return len(self.timesteps)

    def settings(self) -> dict:
        """What ran, for metrics.json and tables: sampler, sub-sequence, S, NFE (network evaluations per
        sample), sequential depth (network calls one after the other) and the rule's parameters."""
        out = {"sampler": self.name, "subsequence": self.subsequence, "steps": len(self.timesteps),
               "nfe": self.nfe, "depth": self.nfe, "clip_x0": self.clip_x0}
        if self.steps is not None and self.steps != len(self.timesteps):  # the spacing could not give S steps
            out["steps_requested"] = self.steps
        return out

    def predictor(self, denoiser) -> PredictFn:
        """The (x0', ε') function the update runs on: the denoiser's, clipped (``clipped``)."""
        d = as_denoiser(denoiser, self.diffusion)
        if d.x0_eps is None:
            check_sampler(self, d)
        return self.clipped(d.x0_eps)

    def clipped(self, predict: PredictFn) -> PredictFn:
        """``predict`` with x0' clipped to [-clip_x0, clip_x0] and ε' re-derived (unchanged without clip_x0)."""
        if self.clip_x0 is None:
            return predict
        c = float(self.clip_x0)

        def predict_clipped(x_t, t):
            x0, _ = predict(x_t, t)
            x0 = x0.clamp(-c, c)
            return x0, self.diffusion.predict_eps_from_x0(x_t, t, x0)

        return predict_clipped

    def sample(self, denoiser, x_T: torch.Tensor, rng=None, progress: bool = False) -> torch.Tensor:
        """x0 from x_T over the plan (NFE = ``self.nfe``); the step noise from ``rng``."""
        return sample_loop(self.predictor(denoiser), self, x_T, self.timesteps,
                           generator=_torch_generator(as_random_source(rng)), progress=progress, allow_repeats=True)

    def coefficients(self, t: int, s: int) -> tuple[float, float, float]:
        raise NotImplementedError

    def step(self, x_t, t: int, s: int, x0, eps, noise=None):
        raise NotImplementedError

    def step_noise(self, x_t: torch.Tensor, t: int, s: int, generator: torch.Generator | None = None):
        """The random draw of a stochastic update t -> s (the process's step noise; a sampler whose update
        draws something else overrides this)."""
        return self.diffusion.step_noise(x_t, t, generator, s=s)


class AncestralSampler(StepSampler):
    """DDPM ancestral sampling x_t -> x_s ~ N(μ̃(x_t, x0'), σ²) with s the next timestep.

    With β' = 1 - ᾱ_t/ᾱ_s (= β_t when s = t-1):
      μ̃ = sqrt(ᾱ_s) β'/(1-ᾱ_t) · x0' + sqrt(1-β') (1-ᾱ_s)/(1-ᾱ_t) · x_t
      σ² = (1-ᾱ_s)/(1-ᾱ_t) β'  ("fixed_small", β̃)  or  β'  ("fixed_large", σ̂ of DDIM).
    No noise is added on the last step (s = -1).
    """

    name = "ddpm"
    stochastic = True

    def __init__(self, diffusion: GaussianDiffusion, variance_type: str = "fixed_small", steps: int | None = None,
                 subsequence=None, clip_x0: float | None = None):
        if variance_type not in VARIANCE_TYPES:
            raise ConfigError(
                f"sampler.variance_type={variance_type!r} is unknown; allowed: {', '.join(VARIANCE_TYPES)}"
            )
        super().__init__(diffusion, steps, subsequence, clip_x0)
        self.variance_type = variance_type

    def settings(self) -> dict:
        return {**super().settings(), "variance_type": self.variance_type}

    def coefficients(self, t: int, s: int) -> tuple[float, float, float]:
        """(coef_x0, coef_xt, std) of the update t -> s, computed in float64."""
        ab_t, ab_s = self.diffusion.alpha_bar(t), self.diffusion.alpha_bar(s)
        beta = 1.0 - ab_t / ab_s
        coef_x0 = ab_s.sqrt() * beta / (1.0 - ab_t)
        coef_xt = (1.0 - beta).sqrt() * (1.0 - ab_s) / (1.0 - ab_t)
        if s < 0:
            var = torch.zeros((), dtype=torch.float64)
        elif self.variance_type == "fixed_small":
            var = (1.0 - ab_s) / (1.0 - ab_t) * beta
        else:
            var = beta
        return float(coef_x0), float(coef_xt), float(var.clamp_min(0).sqrt())

    def step(self, x_t, t: int, s: int, x0, eps, noise=None):
        coef_x0, coef_xt, std = self.coefficients(t, s)
        return _add_noise(coef_x0 * x0 + coef_xt * x_t, std, noise)


class DDIMSampler(StepSampler):
    """DDIM (Song et al. 2021, Eq. 12) from t to the next timestep s (ᾱ_{-1} = 1):

      σ = η · sqrt((1-ᾱ_s)/(1-ᾱ_t)) · sqrt(1 - ᾱ_t/ᾱ_s)
      x_s = sqrt(ᾱ_s) x0' + sqrt(1-ᾱ_s-σ²) ε' + σ z

    η = 0 is deterministic DDIM, η = 1 the DDPM posterior (``AncestralSampler`` fixed_small).
    ``eta="sigma_hat"`` is the σ̂ row of DDIM Table 1: the η=1 mean with the larger noise
    σ̂ = sqrt(1 - ᾱ_t/ᾱ_s) (DDPM's fixed_large over the sub-sequence, as the reference ddpm_steps).
    """

    name = "ddim"

    def __init__(self, diffusion: GaussianDiffusion, eta: float | str = 0.0, steps: int | None = None,
                 subsequence=None, clip_x0: float | None = None):
        if eta == "sigma_hat":
            self.sigma_hat = True
            self.eta = 1.0
        else:
            if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta < float("inf"):
                raise ConfigError(f"sampler.eta={eta!r} is invalid: expected a finite number >= 0 or 'sigma_hat'")
            self.sigma_hat = False
            self.eta = float(eta)
        super().__init__(diffusion, steps, subsequence, clip_x0)
        self.stochastic = self.sigma_hat or self.eta > 0

    def requirements(self) -> frozenset[str]:
        # stochastic DDIM's noise is derived for Gaussian noise (sampler=ddpm draws the process's own noise)
        return self.requires | ({"gaussian_noise"} if self.stochastic else set())

    def settings(self) -> dict:
        return {**super().settings(), "eta": "sigma_hat" if self.sigma_hat else self.eta}

    def coefficients(self, t: int, s: int) -> tuple[float, float, float]:
        """(coef_x0, coef_eps, std) of the update t -> s, computed in float64."""
        ab_t, ab_s = self.diffusion.alpha_bar(t), self.diffusion.alpha_bar(s)
        sigma = self.eta * ((1 - ab_s) / (1 - ab_t)).sqrt() * (1 - ab_t / ab_s).clamp_min(0).sqrt()
        coef_eps = (1 - ab_s - sigma**2).clamp_min(0).sqrt()
        std = (1 - ab_t / ab_s).clamp_min(0).sqrt() if self.sigma_hat else sigma
        if s < 0:
            std = torch.zeros((), dtype=torch.float64)
        return float(ab_s.sqrt()), float(coef_eps), float(std)

    def step(self, x_t, t: int, s: int, x0, eps, noise=None):
        coef_x0, coef_eps, std = self.coefficients(t, s)
        return _add_noise(coef_x0 * x0 + coef_eps * eps, std, noise)


def validate_timesteps(timesteps: Sequence[int], T: int, allow_repeats: bool = False) -> list[int]:
    """Check a sampling sequence: integers in 0..T-1, strictly decreasing (non-increasing with
    ``allow_repeats``: a repeated timestep is a no-op step that still costs a network call, as in
    the reference DDIM code's quadratic spacing)."""
    ts = list(timesteps)
    if any(isinstance(t, bool) or int(t) != t for t in ts):
        raise ConfigError(f"timesteps must be integers, got {ts}")
    ts = [int(t) for t in ts]
    if not ts:
        raise ConfigError("the timestep sequence is empty; it needs at least one step")
    if any(t < 0 or t >= T for t in ts):
        raise ConfigError(f"timesteps must lie in 0..{T - 1} for a schedule of T={T} steps, got {ts}")
    if any(a < b or (a == b and not allow_repeats) for a, b in zip(ts, ts[1:])):
        raise ConfigError(f"timesteps must be strictly decreasing, got {ts}")
    return ts


def run_chain(
    predict: PredictFn,
    sampler,
    x_T: torch.Tensor,
    timesteps: Sequence[int],
    generator: torch.Generator | None = None,
    progress: bool = False,
    allow_repeats: bool = False,
) -> torch.Tensor:
    """Run ``sampler`` from x_T over ``timesteps`` (decreasing), returning the final x0, with autograd as the
    caller has it (``sample_loop`` is this without a graph; model inversion backpropagates through it).

    The network is called once per element of ``timesteps``: the NFE is ``len(timesteps)``.
    Noise for stochastic steps is drawn from ``generator`` on x's device.
    """
    ts = validate_timesteps(timesteps, sampler.diffusion.num_timesteps, allow_repeats)
    nxt = ts[1:] + [-1]
    x = x_T
    it = zip(ts, nxt)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(ts), desc="sampling", leave=False)
    for t, s in it:
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0, eps = predict(x, t_batch)
        noise = None
        if s >= 0 and sampler.stochastic:
            noise = sampler.step_noise(x, t, s, generator)
        x = sampler.step(x, t, s, x0, eps, noise)
    return x


@torch.no_grad()
def sample_loop(predict: PredictFn, sampler, x_T: torch.Tensor, timesteps: Sequence[int],
                generator: torch.Generator | None = None, progress: bool = False,
                allow_repeats: bool = False) -> torch.Tensor:
    """``run_chain`` without a graph."""
    return run_chain(predict, sampler, x_T, timesteps, generator, progress, allow_repeats)


@torch.no_grad()
def ddim_invert(predict: PredictFn, diffusion: GaussianDiffusion, x0: torch.Tensor, timesteps: Sequence[int],
                progress: bool = False) -> torch.Tensor:
    """Deterministic DDIM (η=0) encoding x0 -> x_T, running the update upwards over ``timesteps``.

    ``timesteps`` is the sampling sequence (decreasing, as for ``sample_loop``); the encoder walks it
    from its smallest element up. Each step from the current level c (c = -1 is the data) to the
    next level t evaluates the model at (x_c, t), the usual approximation of the ODE's reverse:
      x_t = sqrt(ᾱ_t) x0'(x_c) + sqrt(1-ᾱ_t) ε'(x_c),  x0'(x_c) = (x_c - sqrt(1-ᾱ_c) ε') / sqrt(ᾱ_c).
    Decoding the result with ``sample_loop`` and ``DDIMSampler(eta=0)`` over the same sequence
    returns x0 up to a discretisation error that falls as the number of steps grows.
    """
    ts = validate_timesteps(timesteps, diffusion.num_timesteps)[::-1]
    x = x0
    cur = -1
    it = ts
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(ts, desc="inverting", leave=False)
    for t in it:
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        _, eps = predict(x, t_batch)
        ab_c, ab_t = diffusion.alpha_bar(cur), diffusion.alpha_bar(t)
        x0_pred = (x - float((1 - ab_c).sqrt()) * eps) / float(ab_c.sqrt())
        x = float(ab_t.sqrt()) * x0_pred + float((1 - ab_t).sqrt()) * eps
        cur = t
    return x


def slerp(z1: torch.Tensor, z2: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latents (per sample, over all non-batch dims):
    sin((1-α)θ)/sin θ · z1 + sin(αθ)/sin θ · z2, θ the angle between z1 and z2 (linear if θ ≈ 0)."""
    a = torch.as_tensor(alpha, dtype=z1.dtype, device=z1.device)
    flat1, flat2 = z1.reshape(z1.shape[0], -1), z2.reshape(z2.shape[0], -1)
    cos = (flat1 * flat2).sum(1) / (flat1.norm(dim=1) * flat2.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1)).reshape(-1, *([1] * (z1.dim() - 1)))
    sin = torch.sin(theta)
    small = sin.abs() < 1e-6
    w1 = torch.where(small, 1 - a, torch.sin((1 - a) * theta) / torch.where(small, 1, sin))
    w2 = torch.where(small, a, torch.sin(a * theta) / torch.where(small, 1, sin))
    return w1 * z1 + w2 * z2


@torch.no_grad()
def sample_generator_chain(predict_x0: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], process,
                           x_T: torch.Tensor, rng, steps: int | None = None) -> torch.Tensor:
    """A diffusion GAN's sampling chain (DDGAN / SIDDM): at every step the generator predicts x0' from
    the current state and the posterior q(x_prev | x_t, x0') gives the next one; the last step returns
    x0' itself.

    * discrete time (``GaussianDiffusion``): t = T-1, ..., 0 over adjacent pairs, so ``steps`` must be
      T (the generator was trained on those pairs only);
    * continuous time (``CosineContinuousTime``): K = ``steps`` (default T) steps at t = i/K, with the
      earlier time (i-1)/K, i = K..1, as the released SIDDM code samples (any K >= 1).

    ``predict_x0(x, t)`` draws its own latent; ``rng`` (``RandomSource``) draws the posterior noise and
    fixes the sample dims (x_T [N, ...] for one model, [E, N, ...] for an ensemble).
    """
    T = process.num_timesteps
    K = T if steps is None else steps
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ConfigError(f"the number of generator steps must be a positive integer, got {K!r}")
    lead = rng.batch_shape(x_T)
    x = x_T
    if getattr(process, "continuous", False):
        for i in range(K, 0, -1):
            t = torch.full(lead, i / K, device=x.device, dtype=x.dtype)
            x0 = predict_x0(x, t)
            if i == 1:
                return x0
            x = process.q_posterior_sample(x0, x, t, rng.randn_like(x), t_prev=torch.full_like(t, (i - 1) / K))
    if K != T:
        raise ConfigError(f"a discrete-time diffusion GAN samples with its T={T} steps (it was trained on adjacent "
                          f"pairs only), got {K}; use schedule=cosine_continuous for any number of steps")
    for step in range(T - 1, -1, -1):
        t = torch.full(lead, step, device=x.device, dtype=torch.long)
        x0 = predict_x0(x, t)
        x = x0 if step == 0 else process.q_posterior_sample(x0, x, t, rng.randn_like(x))
    return x


class GeneratorChain(Sampler):
    """A diffusion GAN's own sampler (DDGAN / SIDDM): K = ``steps`` generator steps (null = the
    process's T; any K >= 1 in continuous time), see ``sample_generator_chain``. An ensemble's members
    (x_T [E, N, ...] and a stacked ``rng``) sample together."""

    name = "generator"
    requires = frozenset({"generator"})
    stochastic = True

    def __init__(self, diffusion, steps: int | None = None):
        T = diffusion.num_timesteps
        K = T if steps is None else steps
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise ConfigError(f"sampler.steps={steps!r} is invalid: expected null (the model's T) or a positive "
                              f"number of generator steps")
        if K != T and not getattr(diffusion, "continuous", False):
            raise ConfigError(f"sampler.steps={K}: a discrete-time diffusion GAN samples with its T={T} steps (it "
                              f"was trained on adjacent pairs only); use schedule=cosine_continuous for any K")
        super().__init__(diffusion)
        self.steps = K

    @property
    def nfe(self) -> int:
        return self.steps

    def settings(self) -> dict:
        return {"sampler": self.name, "steps": self.steps, "nfe": self.steps, "depth": self.steps}

    def sample(self, denoiser, x_T: torch.Tensor, rng=None, progress: bool = False) -> torch.Tensor:
        d = as_denoiser(denoiser, self.diffusion, generator=True)
        if d.x0 is None:
            check_sampler(self, d)
        return sample_generator_chain(d.x0, self.diffusion, x_T, as_random_source(rng), self.steps)


class OwnPlan(Sampler):
    """``sampler=student``: a model's own plan (a siddm-distill checkpoint: the deterministic DDIM plan of the
    round it was saved in, or a knowledge-distilled student's one step at T-1); ``resolve`` gives that sampler."""

    name = "student"
    requires = frozenset({"own_plan"})

    def resolve(self, denoiser: Denoiser) -> Sampler:
        return denoiser.own_sampler()

    @property
    def nfe(self) -> int:
        raise ConfigError("sampler=student takes its plan from the checkpoint it samples: prepare it for that "
                          "model first (prepare_sampler)")

    def sample(self, denoiser, x_T, rng=None, progress=False):
        d = as_denoiser(denoiser, self.diffusion)
        check_sampler(self, d)
        return self.resolve(d).sample(d, x_T, rng, progress)


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
    requires = StepSampler.requires | {"gamma_noise"}
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
        ab_t, ab_s = self.diffusion.alpha_bar(t), self.diffusion.alpha_bar(s)
        theta_t, theta_s = float(ab_t.sqrt()) * self.diffusion.theta0, float(ab_s.sqrt()) * self.diffusion.theta0
        kbar = self._kbar()
        kt, ks = float(kbar[t]), float(kbar[s])
        x0d = x0.to(torch.float64)
        g_t = (x_t.to(torch.float64) - float(ab_t.sqrt()) * x0d + kt * theta_t).clamp_min(0)
        g_s = (theta_s / theta_t) * g_t * noise.to(x_t.device, torch.float64)
        return (float(ab_s.sqrt()) * x0d + g_s - ks * theta_s).to(x_t.dtype)


SAMPLERS = SAMPLER_CLASSES  # every sampler by its config name (the fixed-point ones register on import)


def build_sampler(diffusion, name: str = "ddpm", **kwargs):
    """A sampler by name (``ddpm``, ``ddim``, ``generator``, ...) with its keyword settings."""
    if name not in SAMPLER_CLASSES:
        raise ConfigError(f"sampler {name!r} is unknown; allowed: {', '.join(SAMPLER_CLASSES)}")
    return SAMPLER_CLASSES[name](diffusion, **kwargs)
