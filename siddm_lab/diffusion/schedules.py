"""Noise schedules β_1..β_T, computed in float64.

Index convention (as diffusers): array index ``i = 0..T-1`` holds β_{i+1} of the papers, so
``alphas_cumprod[i] = prod_{k<=i} (1 - betas[k])`` is ᾱ_{i+1}; the clean data x0 sits "before"
index 0 (ᾱ = 1).
"""

from __future__ import annotations

import math

import torch

from siddm_lab.errors import ConfigError

SCHEDULES = ("linear", "scaled_linear", "cosine", "sigmoid", "ddgan_vp")


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM: linspace(β_start, β_end, T)."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def scaled_linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Latent-diffusion "scaled_linear": linspace(sqrt β_start, sqrt β_end, T)² (ermongroup/ddim's "quad")."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def sigmoid_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """ermongroup/diffusers "sigmoid": sigmoid(linspace(-6, 6, T))·(β_end-β_start)+β_start."""
    x = torch.linspace(-6.0, 6.0, T, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021: ᾱ(t)=f(t)/f(0), f(t)=cos²(((t/T+s)/(1+s))·π/2), β clipped at 0.999.

    Computed as diffusers' ``betas_for_alpha_bar`` (squaredcos_cap_v2) does.
    """

    def f(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1.0 - f(i + 1) / f(i), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float64)


def ddgan_vp_betas(
    T: int,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    geometric: bool = False,
    eps_small: float = 1e-3,
) -> torch.Tensor:
    """DDGAN's few-step VP schedule (NVlabs/denoising-diffusion-gan, ``get_sigma_schedule``).

    t_k = k/T·(1-eps)+eps, k = 0..T; var(t) = 1 - exp(2·(-¼t²(βmax-βmin) - ½tβmin)) (VP) or
    βmin·(βmax/βmin)^t (geometric); ᾱ = 1 - var; β_k = 1 - ᾱ_k/ᾱ_{k-1}. The reference code
    prepends 1e-8 as "β_0" so that its index 0 is (almost) clean data; here index 0 is β_1
    and the clean data is exact (ᾱ_0 = 1), which is what its posterior code uses.
    """
    t = torch.arange(0, T + 1, dtype=torch.float64) / T
    t = t * (1.0 - eps_small) + eps_small
    if geometric:
        var = beta_min * (beta_max / beta_min) ** t
    else:
        log_mean_coeff = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
        var = 1.0 - torch.exp(2.0 * log_mean_coeff)
    alpha_bars = 1.0 - var
    return 1.0 - alpha_bars[1:] / alpha_bars[:-1]


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Alg. 1: shift sqrt(ᾱ) so sqrt(ᾱ_T)=0, scale so sqrt(ᾱ_1) is unchanged."""
    alphas_cumprod = torch.cumprod(1.0 - betas.to(torch.float64), dim=0)
    sqrt_ab = alphas_cumprod.sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1.0 - alphas


def check_steps(T) -> int:
    """``T`` if it is a valid number of diffusion steps (the schedule's ``T``: ``diffusion.steps``)."""
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ConfigError(f"diffusion.steps={T!r} is invalid: expected a positive integer (the schedule's T)")
    return T


def make_betas(
    name: str,
    T: int,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    cosine_s: float = 0.008,
    max_beta: float = 0.999,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    geometric: bool = False,
    zero_terminal_snr: bool = False,
) -> torch.Tensor:
    """β_1..β_T (float64, shape [T]) for a named schedule; validates its arguments."""
    check_steps(T)
    if name == "quadratic":  # ermongroup/ddim's name for the same betas; one name per schedule
        raise ConfigError("schedule.name='quadratic' is not a schedule of its own: its betas are scaled_linear's "
                          "(linspace(sqrt beta_start, sqrt beta_end, T)^2); use schedule=scaled_linear")
    if name in ("linear", "scaled_linear", "sigmoid"):
        needs = f"schedule '{name}' needs 0 < beta_start < beta_end < 1"
        for key, v in (("beta_start", beta_start), ("beta_end", beta_end)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
                raise ConfigError(f"schedule.{key}={v!r} is invalid: expected a number in (0, 1) ({needs})")
        if not beta_start < beta_end:
            raise ConfigError(f"schedule.beta_start={beta_start!r} is invalid: expected a number below "
                              f"schedule.beta_end={beta_end!r} ({needs})")
    if name == "linear":
        betas = linear_betas(T, beta_start, beta_end)
    elif name == "scaled_linear":
        betas = scaled_linear_betas(T, beta_start, beta_end)
    elif name == "sigmoid":
        betas = sigmoid_betas(T, beta_start, beta_end)
    elif name == "cosine":
        betas = cosine_betas(T, cosine_s, max_beta)
    elif name == "ddgan_vp":
        if not (0.0 < beta_min < beta_max):
            raise ConfigError(f"schedule 'ddgan_vp' needs 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        if geometric and beta_max >= 1.0:
            raise ConfigError(
                f"schedule 'ddgan_vp' with geometric=true uses beta_max as the terminal variance: it must be "
                f"< 1, got beta_max={beta_max}"
            )
        betas = ddgan_vp_betas(T, beta_min, beta_max, geometric)
    else:
        raise ConfigError(f"schedule.name={name!r} is unknown; allowed: {', '.join(SCHEDULES)}")
    if zero_terminal_snr:
        if T < 2:
            raise ConfigError("schedule.zero_terminal_snr needs diffusion.steps >= 2")
        betas = rescale_zero_terminal_snr(betas)
    if not torch.all((betas > 0) & (betas <= 1)):
        raise ConfigError(f"schedule '{name}' with T={T} gives betas outside (0, 1]")
    return betas
