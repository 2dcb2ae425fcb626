"""Gaussian diffusion: forward process, posterior and parameterisations (DDPM, Ho et al. 2020).

Pure tensor math, no Lightning. All coefficients are precomputed in float64 and cast to the
input's dtype only at the point of use, so float32 training keeps float64-accurate constants.

Timesteps ``t`` are integer tensors of shape [B] indexing 0..T-1 (see ``schedules``); x has
shape [B, ...]. An ensemble of models trained in one process (``siddm_lab.nets.ensemble``) uses
t of shape [E, B] and x of shape [E, B, ...]: every formula broadcasts over the leading dims of t.
``alphas_cumprod_prev[0] = 1`` stands for the clean data.
"""

from __future__ import annotations

import torch
from torch import nn

from siddm_lab.diffusion.rng import GLOBAL, RandomSource
from siddm_lab.diffusion.schedules import make_betas
from siddm_lab.errors import ConfigError

PREDICTION_TYPES = ("eps", "x0", "v")
VARIANCE_TYPES = ("fixed_small", "fixed_large")


def extract(a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """a[t] reshaped to broadcast against x (t [B] -> [B, 1, 1, ...]; t [E, B] -> [E, B, 1, ...]) in x's
    dtype and device."""
    out = a.to(x.device)[t.to(x.device).long()]
    return out.to(x.dtype).reshape(*t.shape, *((1,) * (x.dim() - t.dim())))


class GaussianDiffusion(nn.Module):
    """Schedule-derived coefficients of a discrete Gaussian diffusion with T steps.

    Buffers are non-persistent: they are a function of the config, not of training, so they
    never enter checkpoints or weight averages.
    """

    def __init__(self, betas: torch.Tensor):
        super().__init__()
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 1 or not torch.all((betas > 0) & (betas <= 1)):
            raise ConfigError("betas must be a non-empty vector with values in (0, 1]")
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # β̃_0 = 0: DDPM clips the log at β̃_1 so the log-variance stays finite.
        log_var_clipped = torch.log(
            torch.cat([posterior_variance[1:2] if betas.numel() > 1 else betas[:1], posterior_variance[1:]])
        )
        buffers = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": alphas_cumprod.rsqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
            "sqrt_alphas": alphas.sqrt(),
            "sqrt_betas": betas.sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": log_var_clipped,
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)
        # a host copy that device moves leave in place (``alpha_bar`` of an int timestep)
        self._alphas_cumprod_host = alphas_cumprod.clone()

    noise = "gaussian"
    # The processes by their ``noise`` name: every subclass that sets its own ``noise`` registers itself (the
    # ``noise`` config group picks one in ``from_schedule``); this module never imports its subclasses.
    NOISES: dict[str, type] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "noise" in cls.__dict__:
            GaussianDiffusion.NOISES[cls.noise] = cls

    @classmethod
    def from_schedule(cls, name: str, T: int, noise=None, **kwargs) -> GaussianDiffusion:
        """The process of a β schedule (``make_betas``). ``noise`` (the ``noise`` config group): None or
        {"name": "gaussian"}, or {"name": <a registered noise>, **its settings} (``gamma``: ``theta0``)."""
        kind = (noise or {}).get("name", "gaussian")
        extra = {k: v for k, v in (noise or {}).items() if k != "name"}
        process = cls.NOISES.get(kind)
        if process is None or (process is GaussianDiffusion and extra):
            raise ConfigError(f"noise={dict(noise)!r} is invalid: expected noise=gaussian (no settings) or one of "
                              f"{', '.join(k for k in cls.NOISES if k != 'gaussian')} with its settings "
                              f"(gamma: theta0)")
        return process(make_betas(name, T, **kwargs), **extra)

    def alpha_bar(self, t):
        """ᾱ_t in float64 with ᾱ_{-1} = 1 (the clean data). ``t`` an int: a CPU scalar (the samplers' step
        coefficients are host-side numbers: no device sync per step); a tensor of timesteps (-1 allowed): the
        values on its device."""
        if isinstance(t, torch.Tensor):
            table = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod]).to(t.device)
            return table[t.long() + 1]
        if t < 0:
            return torch.ones((), dtype=torch.float64)
        return self._alphas_cumprod_host[t]

    # ------------------------------------------------------------------ noise (``GammaDiffusion`` overrides)
    def noise_like(self, x0: torch.Tensor, t: torch.Tensor, rng: RandomSource = GLOBAL) -> torch.Tensor:
        """The standardised forward noise ε of q(x_t | x0) (here N(0, I)), from ``rng`` (a RandomSource)."""
        return rng.randn_like(x0)

    def step_noise(self, x: torch.Tensor, t: int, generator: torch.Generator | None = None,
                   s: int | None = None) -> torch.Tensor:
        """The noise z of a reverse step from timestep t (to s; here N(0, I) whatever s), from ``generator`` on
        x's device."""
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def prior_sample(self, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_T for sampling, on the CPU (here N(0, I))."""
        return torch.randn(tuple(shape), generator=generator)

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.numel())

    def _apply(self, fn, recurse=True):
        # Keep the float64 constants in float64 when the module is cast (.float(), .half(),
        # precision plugins); still follow device moves.
        keep = {k: v for k, v in self._buffers.items()}
        super()._apply(fn, recurse)
        for k, v in keep.items():
            moved = self._buffers[k]
            if moved.dtype != torch.float64:
                self._buffers[k] = v.to(moved.device)
        return self

    # ------------------------------------------------------------------ forward process
    def sample_timesteps(self, batch: int, device=None, generator: torch.Generator | None = None):
        """t ~ U{0..T-1}, shape [batch]."""
        return torch.randint(0, self.num_timesteps, (batch,), device=device, generator=generator)

    # The pair interface of the GAN objectives (``siddm_lab.diffusion.losses``), shared with
    # ``CosineContinuousTime``: a training pair is (x_{t-1}, x_t) for the index t.
    def sample_times(self, rng, x0: torch.Tensor) -> torch.Tensor:
        """t ~ U{0..T-1} for every sample of the batch x0 (one per member of an ensemble)."""
        return rng.randint(self.num_timesteps, rng.batch_shape(x0), device=x0.device)

    def prev_time(self, t: torch.Tensor) -> torch.Tensor:
        """The index of the pair's earlier level: t - 1 (-1 is the clean data)."""
        return t - 1

    def q_step_coefficients(self, t: torch.Tensor, like: torch.Tensor):
        """(sqrt(1-β_t), sqrt(β_t)) of q(x_t | x_{t-1}), broadcast against ``like``."""
        return extract(self.sqrt_alphas, t, like), extract(self.sqrt_betas, t, like)

    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor):
        """Mean and variance of q(x_t | x0)."""
        return extract(self.sqrt_alphas_cumprod, t, x0) * x0, extract(1.0 - self.alphas_cumprod, t, x0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None):
        """x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε."""
        if noise is None:
            noise = torch.randn_like(x0)
        return (
            extract(self.sqrt_alphas_cumprod, t, x0) * x0
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_sample_step(self, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None):
        """One forward step q(x_t | x_{t-1}) = N(sqrt(1-β_t) x_{t-1}, β_t I)."""
        if noise is None:
            noise = torch.randn_like(x_prev)
        return extract(self.sqrt_alphas, t, x_prev) * x_prev + extract(self.sqrt_betas, t, x_prev) * noise

    def q_sample_pairs(self, x0: torch.Tensor, t: torch.Tensor, noise_prev=None, noise_step=None):
        """(x_{t-1}, x_t) with x_{t-1} ~ q(x_{t-1}|x0) and x_t ~ q(x_t|x_{t-1}).

        For t = 0, x_{t-1} is the clean x0 (ᾱ_prev = 1). Used by DDGAN/SIDDM.
        """
        if noise_prev is None:
            noise_prev = torch.randn_like(x0)
        sqrt_ab_prev = extract(self.alphas_cumprod_prev, t, x0).sqrt()
        sqrt_1m_ab_prev = extract(1.0 - self.alphas_cumprod_prev, t, x0).sqrt()
        x_prev = sqrt_ab_prev * x0 + sqrt_1m_ab_prev * noise_prev
        return x_prev, self.q_sample_step(x_prev, t, noise_step)

    # ------------------------------------------------------------------ posterior
    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0)."""
        mean = extract(self.posterior_mean_coef1, t, x_t) * x0 + extract(self.posterior_mean_coef2, t, x_t) * x_t
        return (
            mean,
            extract(self.posterior_variance, t, x_t),
            extract(self.posterior_log_variance_clipped, t, x_t),
        )

    def q_posterior_sample(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise=None):
        """x_{t-1} ~ q(x_{t-1} | x_t, x0); exact mean at t = 0 (no noise)."""
        mean, _, log_var = self.q_posterior_mean_variance(x0, x_t, t)
        if noise is None:
            noise = torch.randn_like(x_t)
        nonzero = (t != 0).to(x_t.dtype).reshape(*t.shape, *((1,) * (x_t.dim() - t.dim())))
        return mean + nonzero * (0.5 * log_var).exp() * noise

    # ------------------------------------------------------------------ parameterisations
    def predict_x0_from_eps(self, x_t, t, eps):
        """x0 = (x_t - sqrt(1-ᾱ_t) ε) / sqrt(ᾱ_t)."""
        return extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        ) * eps

    def predict_eps_from_x0(self, x_t, t, x0):
        """ε = (x_t - sqrt(ᾱ_t) x0) / sqrt(1-ᾱ_t)."""
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def get_v(self, x0, eps, t):
        """v = sqrt(ᾱ_t) ε - sqrt(1-ᾱ_t) x0 (Salimans & Ho 2022)."""
        return extract(self.sqrt_alphas_cumprod, t, x0) * eps - extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def predict_x0_from_v(self, x_t, t, v):
        """x0 = sqrt(ᾱ_t) x_t - sqrt(1-ᾱ_t) v."""
        return extract(self.sqrt_alphas_cumprod, t, x_t) * x_t - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v

    def predict_eps_from_v(self, x_t, t, v):
        """ε = sqrt(ᾱ_t) v + sqrt(1-ᾱ_t) x_t."""
        return extract(self.sqrt_alphas_cumprod, t, x_t) * v + extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t

    def training_target(self, prediction_type: str, x0, eps, t):
        """Regression target of the denoiser for a parameterisation."""
        if prediction_type == "eps":
            return eps
        if prediction_type == "x0":
            return x0
        if prediction_type == "v":
            return self.get_v(x0, eps, t)
        raise ConfigError(f"prediction_type={prediction_type!r} is unknown; allowed: {', '.join(PREDICTION_TYPES)}")

    def to_x0_eps(self, prediction_type: str, x_t, t, model_output, clip_x0: float | None = None):
        """(x0', ε') from a network output under any parameterisation; optional x0 clipping."""
        if prediction_type == "eps":
            eps = model_output
            x0 = self.predict_x0_from_eps(x_t, t, eps)
        elif prediction_type == "x0":
            x0 = model_output
            eps = None
        elif prediction_type == "v":
            x0 = self.predict_x0_from_v(x_t, t, model_output)
            eps = self.predict_eps_from_v(x_t, t, model_output)
        else:
            raise ConfigError(
                f"prediction_type={prediction_type!r} is unknown; allowed: {', '.join(PREDICTION_TYPES)}"
            )
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            eps = None
        if eps is None:
            eps = self.predict_eps_from_x0(x_t, t, x0)
        return x0, eps


GaussianDiffusion.NOISES["gaussian"] = GaussianDiffusion
