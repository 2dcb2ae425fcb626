"""Samplers: reverse-process updates over a decreasing timestep sequence.

A sampler is independent of the network: the loop calls ``predict(x_t, t) -> (x0', ε')`` (a
trained DDPM's denoiser converted by ``GaussianDiffusion.to_x0_eps`` or a SIDDM generator), so
the same sampler serves every model. Each update uses the actual next element ``s`` of the
sequence (``s = -1`` is the clean data, ᾱ_{-1} := 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from siddm_lab.diffusion import subsequences as _subsequences
from siddm_lab.diffusion.gaussian import VARIANCE_TYPES, GaussianDiffusion
from siddm_lab.errors import ConfigError

PredictFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _alpha_bar(diffusion: GaussianDiffusion, t: int) -> torch.Tensor:
    """ᾱ_t as a float64 CPU scalar (ᾱ_{-1} = 1). The step coefficients are host-side scalars; reading
    them from a CPU copy (made once per device placement) avoids a device sync per sampling step."""
    if t < 0:
        return torch.ones((), dtype=torch.float64)
    ab = diffusion.alphas_cumprod
    cache = getattr(diffusion, "_alphas_cumprod_cpu", None)
    if cache is None or cache[0] is not ab:
        cache = (ab, ab.detach().to("cpu", torch.float64))
        diffusion._alphas_cumprod_cpu = cache
    return cache[1][t]


def _add_noise(mean: torch.Tensor, std: float, noise: torch.Tensor | None) -> torch.Tensor:
    """mean + std·z (z = ``noise`` or fresh N(0, I)); the mean alone when std = 0."""
    if std <= 0:
        return mean
    return mean + std * (torch.randn_like(mean) if noise is None else noise)


# The plain sequences, kept under their sampler-side names (the sub-sequence module holds the maths).
full_timesteps = _subsequences.full
uniform_timesteps = _subsequences.uniform


class StepSampler:
    """A reverse-process sampler: an update rule (``step``) over a timestep plan.

    The plan is S = ``steps`` timesteps of the sub-sequence ``subsequence`` (a ``make_timesteps``
    spec, the ``subsequence`` config group; default uniform). ``steps`` null means the sub-sequence's
    own length: every timestep for a spacing (uniform, leading, linspace, trailing, quadratic), the
    fixed length of exponential / last_k / first_k_last_k / explicit, which take no S. ``clip_x0``
    clips the model's x0' to [-c, c] and re-derives ε' from the clipped x0'.

    The same object serves periodic evaluation, the end-of-training evaluation and ``siddm-sample``
    (``conf/sampler``: a partial bound to the model's process with ``diffusion=``).
    """

    name = "step"
    stochastic = True

    def __init__(self, diffusion: GaussianDiffusion, steps: int | None = None, subsequence=None,
                 clip_x0: float | None = None):
        if clip_x0 is not None and (isinstance(clip_x0, bool) or not isinstance(clip_x0, (int, float))
                                    or clip_x0 <= 0):
            raise ConfigError(f"sampler.clip_x0={clip_x0!r} is invalid: expected null or a positive number")
        self.diffusion = diffusion
        self.clip_x0 = clip_x0
        self.steps = steps
        self.subsequence, self.timesteps = _subsequences.plan(diffusion.num_timesteps, steps, subsequence)

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

    def sample(self, predict: PredictFn, x_T: torch.Tensor, generator: torch.Generator | None = None,
               progress: bool = False) -> torch.Tensor:
        """x0 from x_T over the plan (NFE = ``self.nfe``)."""
        return sample_loop(self.clipped(predict), self, x_T, self.timesteps, generator=generator, progress=progress,
                           allow_repeats=True)

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
        ab_t, ab_s = _alpha_bar(self.diffusion, t), _alpha_bar(self.diffusion, s)
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
        if self.stochastic and getattr(diffusion, "noise", "gaussian") != "gaussian":
            raise ConfigError(f"sampler.eta={eta}: stochastic DDIM is derived for Gaussian noise; this process has "
                              f"{diffusion.noise} noise: use sampler=ddpm (ancestral, with its noise) or sampler.eta=0")

    def settings(self) -> dict:
        return {**super().settings(), "eta": "sigma_hat" if self.sigma_hat else self.eta}

    def coefficients(self, t: int, s: int) -> tuple[float, float, float]:
        """(coef_x0, coef_eps, std) of the update t -> s, computed in float64."""
        ab_t, ab_s = _alpha_bar(self.diffusion, t), _alpha_bar(self.diffusion, s)
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
        ab_c, ab_t = _alpha_bar(diffusion, cur), _alpha_bar(diffusion, t)
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


class GeneratorChain:
    """A diffusion GAN's own sampler (DDGAN / SIDDM): K = ``steps`` generator steps (null = the
    process's T; any K >= 1 in continuous time), see ``sample_generator_chain``."""

    name = "generator"
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
        self.diffusion, self.steps = diffusion, K

    @property
    def nfe(self) -> int:
        return self.steps

    def settings(self) -> dict:
        return {"sampler": self.name, "steps": self.steps, "nfe": self.steps, "depth": self.steps}

    def sample(self, predict_x0, x_T: torch.Tensor, rng) -> torch.Tensor:
        return sample_generator_chain(predict_x0, self.diffusion, x_T, rng, self.steps)


SAMPLERS = {"ddpm": AncestralSampler, "ddim": DDIMSampler, "generator": GeneratorChain}  # + deq, picard, gamma_ddim


def build_sampler(diffusion, name: str = "ddpm", **kwargs):
    """A sampler by name (``ddpm``, ``ddim``, ``generator``) with its keyword settings."""
    if name not in SAMPLERS:
        raise ConfigError(f"sampler {name!r} is unknown; allowed: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](diffusion, **kwargs)
