"""ODE solvers of diffusers as samplers: DPM-Solver++, UniPC, DEIS and Heun (``sampler=dpm_solver``, ``unipc``,
``deis``, ``heun``).

Each class wraps one diffusers scheduler (``DPMSolverMultistepScheduler``, ``UniPCMultistepScheduler``,
``DEISMultistepScheduler``, ``HeunDiscreteScheduler``); the update rules are diffusers' own, this module only
builds the scheduler from the model's process, runs diffusers' loop and records what ran. What it decides:

* **The process.** ``trained_betas`` are the process's betas cast to float32 (diffusers builds its schedule in
  float32 from them; our betas and ᾱ are float64), ``num_train_timesteps`` = T. diffusers' float32 cumulative
  product differs from our float64 ᾱ by at most 3e-7 (relative) on linear T = 1000 and 1.3e-5 on cosine
  T = 1000: the solver's step sizes carry that error, the model's predictions do not (they use our float64
  constants). Solvers solve the probability-flow ODE of a Gaussian process with a deterministic denoiser:
  ``requires`` holds ``deterministic`` and ``gaussian_noise`` besides a discrete-time (x0', ε') model, so a
  diffusion GAN, a Gamma-noise process and a continuous-time model are refused by ``check_sampler``.
* **What diffusers is given: x0'** (``prediction_type="sample"``), from ``denoiser.x0_eps``, whatever the network
  predicts (x0, ε or v: the model converts). DPM-Solver++ and UniPC (``predict_x0``) are data-prediction
  solvers and Heun steps with the EDM denoiser D(x; σ) = x0': each turns any input into x0' first, so x0' skips a
  float32 round trip x0' -> ε' -> (x - σ ε')/α that divides by α_t (0.006 at t = T-1 on linear T = 1000), and
  it is the only input that is right at zero terminal SNR (below). DEIS converts x0' to ε' with its own α_t,
  σ_t. ``clip_x0`` clamps that x0' to [-c, c] before diffusers sees it: our clip semantics exactly (the solvers
  step with the clipped x0'). diffusers' ``thresholding`` is not used: it is dynamic thresholding (a per-sample
  quantile s of |x0'|, then clamp to [-s, s] and divide by s), a different operation.
* **A fresh scheduler per ``sample`` call.** diffusers' schedulers keep the solver's history (previous model
  outputs, the step index, Heun's half step) between calls to ``step``; one is built for every call and never
  shared across batches or calls.
* **The plan.** ``steps`` (diffusers' ``num_inference_steps``) with diffusers' ``timestep_spacing`` (linspace /
  leading / trailing, diffusers' definitions: the multistep schedulers' linspace is
  round(linspace(0, T-1, S+1))[::-1][:-1], from T-1 down without 0, not our ``subsequence=linspace`` nor DDIM's
  uniform spacing), or, where the scheduler takes custom timesteps (DPM-Solver, Heun), ``timestep_spacing=null``
  and the plan of the ``subsequence`` group (any of ours: uniform, explicit, ...). A plan diffusers would run
  with a timestep outside 0..T-1 or a repeated one (trailing spacing with some S: T = 1000, S = 61 gives a last
  timestep -1; leading spacing with S + 1 > T/2) is refused, as is a single step at t = 0. ``settings()`` records
  the plan that ran (``timesteps``), the spacing, the order, NFE and depth.
* **Integer timesteps.** The model takes integer timesteps only. The multistep schedulers give integers. Heun's
  linspace spacing is np.linspace(0, T-1, S) without rounding: fractional timesteps for most S (T = 50, S = 7:
  40.83, 32.67, ...), at which diffusers interpolates σ linearly between integer timesteps. Calling the model at
  round(t) with the interpolated σ would mismatch the noise level the model assumes, and interpolating model
  outputs would cost calls; so Heun's plan is rounded to integers (round(linspace(0, T-1, S)), our
  ``subsequence=linspace``) and given to diffusers as custom timesteps, whose σ are then exactly those of the
  integer timesteps the model is called at (``timesteps_rounded: true`` in the settings). diffusers' Karras /
  exponential sigmas (fractional timesteps by construction) are not used; EDM's Karras spacing is
  ``timestep_spacing=null subsequence=karras``: the same σ levels, each taken to the integer timestep of nearest
  log σ (``subsequences.karras``), so the model is called at the noise level it was trained at.
* **Heun's start.** Heun steps in the variance-exploding variable x / sqrt(ᾱ_t) and scales the model input
  back by 1/sqrt(1 + σ_t²). Our x_T is the state at the plan's first timestep t_0 (as for every sampler here), so
  Heun starts from x_T · sqrt(1 + σ_{t_0}²), the state whose model input is exactly x_T. diffusers' pipelines
  start from ``init_noise_sigma`` · z, which for linspace / trailing is σ_max · z: the same to O(1/σ_max²) when
  σ_max is large (157 on linear T = 1000), not on short schedules (T = 50: σ_max = 0.8).
* **NFE.** One network call per entry of the scheduler's ``timesteps``: S for the multistep solvers (UniPC's
  corrector reuses the next step's call), 2 S - 1 for Heun (two calls per step, one on the last step, an Euler
  step to σ = 0 where the corrector would divide by σ = 0).
* **Zero terminal SNR** (ᾱ_{T-1} = 0, e.g. ``schedule=linear_zsnr``: λ_{T-1} = -∞, σ_{T-1} = ∞). DPM-Solver and
  UniPC are built with diffusers' ``rescale_betas_zero_snr=True``: on betas that already end at ᾱ = 0 the
  rescaling is the identity (up to float32 round-off), and diffusers then stands in ᾱ_{T-1} = 2^-24 for 0, so the
  first step has a finite λ while the model is called at t = T-1 as trained; the first step uses the model's x0'
  directly (an ε' input would be turned into x0' = (x − σ ε')/α with α = 2^-12, which loses it). DEIS and Heun
  have no such option in diffusers and refuse such a process. (Our cosine schedule caps β at 0.999:
  ᾱ_{T-1} = 2.4e-9 on T = 1000, finite; DPM-Solver's ``lambda_min_clipped`` (-5.1 is diffusers' advice for cosine)
  starts its spacings where λ >= that value.)
* **Combinations diffusers cannot run** are refused with the reason: UniPC's ``solver_type=bh1`` with
  ``final_sigmas_type=zero`` (B(h) = h is infinite on the last step: NaN samples), UniPC with
  ``lower_order_final=false`` and ``final_sigmas_type=zero`` at order >= 2 (NaN or a singular system).
"""

from __future__ import annotations

import math

import torch

from siddm_lab.diffusion import subsequences as _subsequences
from siddm_lab.diffusion.samplers import (
    Denoiser,
    Sampler,
    _torch_generator,
    as_denoiser,
    as_random_source,
    check_sampler,
)
from siddm_lab.errors import ConfigError

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
ORDERS = (1, 2, 3)
UNIPC_SOLVER_TYPES = ("bh1", "bh2")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_bool(key: str, v) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"sampler.{key}={v!r} is invalid: expected true or false")
    return v


def _check_choice(key: str, v, allowed, what: str | None = None):
    if isinstance(v, bool) or v not in allowed:
        expected = what or ", ".join(str(a) for a in allowed)
        raise ConfigError(f"sampler.{key}={v!r} is invalid: expected {expected}")
    return v


def _default_subsequence(spec) -> bool:
    """Whether ``spec`` is the ``subsequence`` group's default (uniform, no options): what a sampler that plans
    with diffusers' spacing receives when the user chose no sub-sequence."""
    if spec is None:
        return True
    spec = dict(spec)
    return spec.get("name", "uniform") == "uniform" and not spec.get("keep_duplicates", False) \
        and not set(spec) - {"name", "keep_duplicates"}


def _shown(ts: list, n: int = 8) -> str:
    return str(ts) if len(ts) <= n else f"[{', '.join(str(t) for t in ts[:n // 2])}, ..., " \
                                         f"{', '.join(str(t) for t in ts[-n // 2:])}] ({len(ts)} timesteps)"


class DiffusersSolver(Sampler):
    """A diffusers scheduler run as a sampler (module docstring): the common plan, build and loop.

    Subclasses set ``name``, ``scheduler_class`` (the diffusers class name), whether diffusers' ``set_timesteps``
    takes custom timesteps (``custom_timesteps``) and whether the scheduler has ``rescale_betas_zero_snr``
    (``zero_snr``), and give their own settings (``solver_config``, ``solver_settings``).
    """

    name = "diffusers_solver"
    abstract = True
    requires = frozenset({"x0_eps", "discrete_time", "deterministic", "gaussian_noise"})
    stochastic = False
    scheduler_class = ""
    custom_timesteps = False
    zero_snr = False

    def __init__(self, diffusion, steps: int | None = 20, timestep_spacing: str | None = "linspace",
                 subsequence=None, clip_x0: float | None = None):
        self._check_process(diffusion)
        super().__init__(diffusion)
        T = diffusion.num_timesteps
        if clip_x0 is not None and (isinstance(clip_x0, bool) or not isinstance(clip_x0, (int, float))
                                    or not 0 < clip_x0 < math.inf):
            raise ConfigError(f"sampler.clip_x0={clip_x0!r} is invalid: expected null or a positive number")
        self.clip_x0 = clip_x0
        self.timestep_spacing = timestep_spacing
        self.timesteps_rounded = False
        custom = None
        if timestep_spacing is None:
            if not self.custom_timesteps:
                raise ConfigError(f"sampler.timestep_spacing=null (the plan of the subsequence group) is not available "
                                  f"for sampler={self.name}: diffusers' {self.scheduler_class} takes no custom "
                                  f"timesteps; expected one of {', '.join(TIMESTEP_SPACINGS)}")
            self.subsequence, custom = _subsequences.plan(T, steps, subsequence, diffusion.alphas_cumprod)
            if len(set(custom)) != len(custom):
                raise ConfigError(f"sampler={self.name} needs distinct timesteps (a repeated timestep is a step of "
                                  f"size 0 for an ODE solver), got {_shown(custom)}: set "
                                  f"subsequence.keep_duplicates=false")
        else:
            _check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS,
                          f"one of {', '.join(TIMESTEP_SPACINGS)} (diffusers' spacings)"
                          + (", or null (the plan of the subsequence group)" if self.custom_timesteps else ""))
            if not _default_subsequence(subsequence):
                name = dict(subsequence).get("name", "uniform")
                fix = ("set sampler.timestep_spacing=null to run the sub-sequence's plan" if self.custom_timesteps
                       else f"diffusers' {self.scheduler_class} takes no custom timesteps: leave the subsequence at "
                            f"its default")
                raise ConfigError(f"sampler.timestep_spacing={timestep_spacing} plans with diffusers' spacing, so "
                                  f"subsequence={name} would be ignored: {fix}")
            if not _is_int(steps) or steps < 1:
                raise ConfigError(f"sampler.steps={steps!r} is invalid: expected a positive integer (diffusers' "
                                  f"num_inference_steps)")
            if steps > T:
                raise ConfigError(f"sampler.steps={steps} is larger than the schedule (T={T}); allowed: 1..{T}")
            self.subsequence = None
        self.steps = steps
        self._custom = custom
        self._config = {**self.solver_config(), "num_train_timesteps": T, "prediction_type": "sample",
                        "trained_betas": diffusion.betas.detach().to("cpu", torch.float32).tolist()}
        if timestep_spacing is not None:
            self._config["timestep_spacing"] = timestep_spacing
        self.zero_terminal_snr = False
        self._plan()

    # ------------------------------------------------------------------ building
    def _check_process(self, diffusion) -> None:
        """A process the scheduler cannot be built from (continuous time: no betas) is refused with
        ``check_sampler``'s message; a Gamma process builds, and the model check refuses it."""
        if getattr(diffusion, "continuous", False) or not hasattr(diffusion, "betas"):
            check_sampler(type(self), Denoiser(diffusion, x0_eps=lambda x, t: (x, x),
                                               description=f"a model of this process ({type(diffusion).__name__})"))

    def solver_config(self) -> dict:
        """The scheduler's own settings (diffusers' keyword arguments)."""
        return {}

    def solver_settings(self) -> dict:
        """The scheduler's own settings, for ``settings()``."""
        return {}

    def _scheduler_type(self):
        try:
            import diffusers
        except ImportError as e:  # a dependency of the package; a broken environment says so
            raise ConfigError(f"sampler={self.name} runs diffusers' {self.scheduler_class}, and diffusers cannot be "
                              f"imported ({e}): pip install 'diffusers>=0.30'") from e
        return getattr(diffusers, self.scheduler_class)

    def scheduler(self, device=None):
        """A new scheduler with the plan set (one per ``sample`` call: diffusers' schedulers keep state)."""
        sched = self._scheduler_type()(**self._config)
        if self._custom is not None:
            sched.set_timesteps(device=device, timesteps=list(self._custom))
        else:
            sched.set_timesteps(self.steps, device=device)
        return sched

    def _plan(self) -> None:
        """Build a scheduler once: zero terminal SNR, the timesteps it will call the model at (checked: integers
        in 0..T-1, a strictly decreasing plan), the NFE."""
        T = self.diffusion.num_timesteps
        cls = self._scheduler_type()
        probe = cls(**self._config)
        ab = probe.alphas_cumprod.to(torch.float64)
        if not torch.all(ab > 0):
            zero = [int(i) for i in torch.nonzero(ab <= 0).flatten()]
            if zero != [T - 1]:
                raise ConfigError(f"sampler={self.name}: this process has ᾱ_t = 0 (in float32) at t = {zero}, not only "
                                  f"at the last timestep; no ODE solver plan can start from it")
            if not self.zero_snr:
                raise ConfigError(
                    f"sampler={self.name} cannot sample a process with zero terminal SNR (ᾱ_(T-1) = 0: λ = -inf, "
                    f"σ = inf at t = T-1): diffusers' {self.scheduler_class} has no rescale_betas_zero_snr to stand a "
                    f"finite value in; use sampler=dpm_solver or sampler=unipc (or sampler=ddim)")
            self._config["rescale_betas_zero_snr"] = True
            self.zero_terminal_snr = True
        sched = self.scheduler()
        ts = [float(t) for t in sched.timesteps]
        if any(t != round(t) for t in ts):
            if not self.custom_timesteps:  # not reached with diffusers 0.42: only Heun's linspace is fractional
                raise ConfigError(f"sampler={self.name}: diffusers' plan has fractional timesteps {_shown(ts)}; the "
                                  f"model takes integer timesteps")
            base = self.plan_timesteps(ts)
            self._custom = [int(round(t)) for t in base]
            self.timesteps_rounded = True
            sched = self.scheduler()
            ts = [float(t) for t in sched.timesteps]
        calls = [int(round(t)) for t in ts]
        plan = self.plan_timesteps(calls)
        where = (f"timestep_spacing={self.timestep_spacing} and sampler.steps={self.steps}"
                 if self._custom is None or self.timesteps_rounded else f"the subsequence {self.subsequence}")
        if any(not 0 <= t < T for t in plan) or any(a <= b for a, b in zip(plan, plan[1:])):
            defect = (" (diffusers' trailing spacing computes arange(T, 0, -T/S), which gives S+1 timesteps ending at "
                      "-1 for some S)" if self.timestep_spacing == "trailing" and plan[-1] < 0 else "")
            alt = (" (or timestep_spacing=null with subsequence=trailing, which keeps the first S)"
                   if self.custom_timesteps and defect else "")
            raise ConfigError(f"sampler={self.name} with {where} gives diffusers' plan {_shown(plan)} for T={T}, which "
                              f"is not a strictly decreasing plan in 0..{T - 1}{defect}: choose another sampler.steps "
                              f"or spacing{alt}")
        if plan == [0] and T > 1:
            raise ConfigError(f"sampler={self.name} with {where} is the single step t=0, which skips the whole "
                              f"reverse process; a one-step plan starts at T-1: timestep_spacing=trailing")
        self.timesteps = plan
        self.call_timesteps = calls

    def plan_timesteps(self, calls: list) -> list:
        """The plan (one entry per solver step) of the timesteps the model is called at (one per call)."""
        return list(calls)

    # ------------------------------------------------------------------ interface
    @property
    def nfe(self) -> int:
        """Network evaluations per sample: one per entry of the scheduler's timesteps."""
        return len(self.call_timesteps)

    def settings(self) -> dict:
        out = {"sampler": self.name, "scheduler": self.scheduler_class, "steps": len(self.timesteps),
               "nfe": self.nfe, "depth": self.nfe, "timestep_spacing": self.timestep_spacing,
               "subsequence": self.subsequence, "timesteps": list(self.timesteps), **self.solver_settings(),
               "clip_x0": self.clip_x0, "model_input": "x0", "zero_terminal_snr": self.zero_terminal_snr}
        if self.steps is not None and self.steps != len(self.timesteps):
            out["steps_requested"] = self.steps
        return out

    def initial_state(self, scheduler, x_T: torch.Tensor) -> torch.Tensor:
        """The scheduler's state at the plan's first timestep for our x_T (the state there)."""
        return x_T

    @torch.no_grad()
    def sample(self, denoiser, x_T: torch.Tensor, rng=None, progress: bool = False) -> torch.Tensor:
        """x0 from x_T with a fresh scheduler: diffusers' loop, the model called with integer timesteps and its
        x0' (clamped with ``clip_x0``) given to ``step``; ``rng`` is not drawn from (a deterministic solver)."""
        d = as_denoiser(denoiser, self.diffusion)
        check_sampler(self, d)
        _torch_generator(as_random_source(rng))  # one model's samples (an ensemble's stacked source is refused)
        sched = self.scheduler(x_T.device)
        x = self.initial_state(sched, x_T)
        it = sched.timesteps
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"sampling ({self.name})", leave=False)
        for t, t_int in zip(it, self.call_timesteps):
            x_in = sched.scale_model_input(x, t)
            x0, _ = d.x0_eps(x_in, torch.full((x.shape[0],), t_int, device=x.device, dtype=torch.long))
            if self.clip_x0 is not None:
                x0 = x0.clamp(-float(self.clip_x0), float(self.clip_x0))
            x = sched.step(x0, t, x).prev_sample
        return x


class _Multistep(DiffusersSolver):
    """The multistep solvers' shared settings: ``order`` (diffusers' solver_order) and ``lower_order_final``."""

    abstract = True

    def __init__(self, diffusion, steps: int | None = 20, order: int = 2, timestep_spacing: str | None = "linspace",
                 lower_order_final: bool = True, subsequence=None, clip_x0: float | None = None):
        if not _is_int(order) or order not in ORDERS:
            raise ConfigError(f"sampler.order={order!r} is invalid: expected 1, 2 or 3")
        self.order = order
        self.lower_order_final = _check_bool("lower_order_final", lower_order_final)
        super().__init__(diffusion, steps, timestep_spacing, subsequence, clip_x0)

    def solver_config(self) -> dict:
        return {"solver_order": self.order, "lower_order_final": self.lower_order_final}

    def solver_settings(self) -> dict:
        return {"order": self.order, "lower_order_final": self.lower_order_final}


class DPMSolverSampler(_Multistep):
    """DPM-Solver++ (Lu et al. 2022), multistep, data prediction: diffusers' ``DPMSolverMultistepScheduler`` with
    ``algorithm_type="dpmsolver++"`` (``solver_type`` midpoint, diffusers' default).

    Settings: ``steps`` (S = NFE), ``order`` 1, 2 or 3 (1 is DDIM η = 0 on the same plan; the first steps are
    lower order until the history fills), ``timestep_spacing`` (diffusers' linspace / leading / trailing, or null:
    the ``subsequence`` group's plan as custom timesteps), ``lower_order_final`` (diffusers: with fewer than 15
    steps the last steps drop to lower order; with ``final_sigmas_type=zero`` the last step is first order in any
    case), ``final_sigmas_type`` (zero: the last step lands on the data, σ = 0; sigma_min: on σ of t = 0, a
    sample with the small noise of t = 0 left), ``lambda_min_clipped`` (null = -inf; diffusers' spacings start
    where λ_t >= this; -5.1 is diffusers' advice for cosine schedules), ``clip_x0``. Zero terminal SNR: see the
    module docstring."""

    name = "dpm_solver"
    scheduler_class = "DPMSolverMultistepScheduler"
    custom_timesteps = True
    zero_snr = True

    def __init__(self, diffusion, steps: int | None = 20, order: int = 2, timestep_spacing: str | None = "linspace",
                 lower_order_final: bool = True, final_sigmas_type: str = "zero",
                 lambda_min_clipped: float | None = None, subsequence=None, clip_x0: float | None = None):
        self.final_sigmas_type = _check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        if lambda_min_clipped is not None and (isinstance(lambda_min_clipped, bool)
                                               or not isinstance(lambda_min_clipped, (int, float))
                                               or not math.isfinite(lambda_min_clipped)):
            raise ConfigError(f"sampler.lambda_min_clipped={lambda_min_clipped!r} is invalid: expected null (no "
                              f"clipping) or a finite number (log-SNR/2 below which diffusers' spacing does not start)")
        if lambda_min_clipped is not None and timestep_spacing is None:
            raise ConfigError("sampler.lambda_min_clipped acts on diffusers' spacings only; with "
                              "sampler.timestep_spacing=null the subsequence's plan runs as given: set "
                              "sampler.lambda_min_clipped=null")
        self.lambda_min_clipped = lambda_min_clipped
        super().__init__(diffusion, steps, order, timestep_spacing, lower_order_final, subsequence, clip_x0)

    def solver_config(self) -> dict:
        return {**super().solver_config(), "algorithm_type": "dpmsolver++", "final_sigmas_type": self.final_sigmas_type,
                "lambda_min_clipped": -math.inf if self.lambda_min_clipped is None else float(self.lambda_min_clipped)}

    def solver_settings(self) -> dict:
        return {**super().solver_settings(), "algorithm_type": "dpmsolver++",
                "final_sigmas_type": self.final_sigmas_type, "lambda_min_clipped": self.lambda_min_clipped}


class UniPCSampler(_Multistep):
    """UniPC (Zhao et al. 2023): diffusers' ``UniPCMultistepScheduler``, data prediction (``predict_x0``), the
    UniP predictor with the UniC corrector (the corrector reuses the next step's network call: NFE = S).

    Settings: ``steps``, ``order`` 1, 2 or 3, ``solver_type`` bh1 / bh2 (B(h) = h or e^h - 1), ``timestep_spacing``
    (diffusers' linspace / leading / trailing; this scheduler takes no custom timesteps), ``lower_order_final``
    (the last steps drop to the order the remaining steps allow), ``final_sigmas_type`` (zero / sigma_min),
    ``clip_x0``. Refused: bh1 with final_sigmas_type=zero, and lower_order_final=false with final_sigmas_type=zero
    at order >= 2 (diffusers gives NaN samples or a singular system on the last step to σ = 0)."""

    name = "unipc"
    scheduler_class = "UniPCMultistepScheduler"
    custom_timesteps = False
    zero_snr = True

    def __init__(self, diffusion, steps: int | None = 20, order: int = 2, solver_type: str = "bh2",
                 timestep_spacing: str | None = "linspace", lower_order_final: bool = True,
                 final_sigmas_type: str = "zero", subsequence=None, clip_x0: float | None = None):
        self.solver_type = _check_choice("solver_type", solver_type, UNIPC_SOLVER_TYPES)
        self.final_sigmas_type = _check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        if final_sigmas_type == "zero" and solver_type == "bh1":
            raise ConfigError("sampler.solver_type=bh1 with sampler.final_sigmas_type=zero gives NaN samples in "
                              "diffusers' UniPCMultistepScheduler (B(h) = h is infinite on the last step to σ = 0): "
                              "set sampler.final_sigmas_type=sigma_min or sampler.solver_type=bh2")
        if final_sigmas_type == "zero" and lower_order_final is False and order in (2, 3):
            raise ConfigError(f"sampler.lower_order_final=false with sampler.final_sigmas_type=zero and "
                              f"sampler.order={order} fails in diffusers' UniPCMultistepScheduler (NaN samples or a "
                              f"singular system on the last step to σ = 0): set sampler.lower_order_final=true or "
                              f"sampler.final_sigmas_type=sigma_min")
        super().__init__(diffusion, steps, order, timestep_spacing, lower_order_final, subsequence, clip_x0)

    def solver_config(self) -> dict:
        return {**super().solver_config(), "solver_type": self.solver_type, "predict_x0": True,
                "final_sigmas_type": self.final_sigmas_type}

    def solver_settings(self) -> dict:
        return {**super().solver_settings(), "solver_type": self.solver_type,
                "final_sigmas_type": self.final_sigmas_type}


class DEISSampler(_Multistep):
    """DEIS (Zhang & Chen 2023), multistep exponential integrator in log-ρ (``solver_type`` logrho): diffusers'
    ``DEISMultistepScheduler``.

    Settings: ``steps``, ``order`` 1, 2 or 3, ``timestep_spacing`` (diffusers' linspace / leading / trailing; no
    custom timesteps), ``lower_order_final``, ``clip_x0``. diffusers' DEIS has no ``final_sigmas_type``: its last
    step always lands on σ of t = 0 (recorded as ``final_sigmas_type: sigma_min``), a sample with the small noise
    of t = 0 left (σ_0 = sqrt(β_0 / (1 - β_0)) = 0.01 on linear); nor ``rescale_betas_zero_snr``: a process with
    zero terminal SNR is refused."""

    name = "deis"
    scheduler_class = "DEISMultistepScheduler"
    custom_timesteps = False
    zero_snr = False

    def solver_config(self) -> dict:
        return {**super().solver_config(), "algorithm_type": "deis", "solver_type": "logrho"}

    def solver_settings(self) -> dict:
        return {**super().solver_settings(), "algorithm_type": "deis", "final_sigmas_type": "sigma_min"}


class HeunSampler(DiffusersSolver):
    """Heun's 2nd-order method on the probability-flow ODE in σ (EDM, Karras et al. 2022, Alg. 1 without churn):
    diffusers' ``HeunDiscreteScheduler``. Each step is an Euler predictor and a trapezoidal corrector, two network
    calls, except the last (σ -> 0), a single Euler step: NFE = 2·steps − 1.

    Settings: ``steps`` (S plan timesteps), ``timestep_spacing`` (diffusers' linspace / leading / trailing, or null:
    the ``subsequence`` group's plan as custom timesteps), ``clip_x0`` (the same clamp as diffusers'
    ``clip_sample`` / ``clip_sample_range``). diffusers' linspace gives fractional timesteps for most S: rounded to
    integers (module docstring). The last step always lands on σ = 0. Zero terminal SNR is refused (no
    ``rescale_betas_zero_snr`` in diffusers' Heun)."""

    name = "heun"
    scheduler_class = "HeunDiscreteScheduler"
    custom_timesteps = True
    zero_snr = False

    def __init__(self, diffusion, steps: int | None = 10, timestep_spacing: str | None = "linspace",
                 subsequence=None, clip_x0: float | None = None):
        super().__init__(diffusion, steps, timestep_spacing, subsequence, clip_x0)

    def plan_timesteps(self, calls: list) -> list:
        # diffusers' Heun timesteps: [t_0, t_1, t_1, ..., t_(S-1), t_(S-1)] (every later timestep twice)
        return [calls[0], *calls[1::2]]

    def solver_settings(self) -> dict:
        return {"order": 2, "timesteps_rounded": self.timesteps_rounded, "final_sigmas_type": "zero"}

    def initial_state(self, scheduler, x_T: torch.Tensor) -> torch.Tensor:
        # Heun's state is x / sqrt(ᾱ) = x · sqrt(1 + σ²): the state whose model input (scale_model_input) is x_T
        return x_T * float((scheduler.sigmas[0].double() ** 2 + 1).sqrt())
