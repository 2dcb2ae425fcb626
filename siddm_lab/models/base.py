"""The shared base of the diffusion LightningModules (DDPM, DDIM, SIDDM, DDGAN).

Every module is a GENERATOR (a denoiser f(x_t, t), or a GAN generator G(x_t, t, z)), an optional
DISCRIMINATOR and an OBJECTIVE (``siddm_lab.diffusion.losses``) that returns the discriminator's
terms (``d_terms``) and the generator's (``g_terms``). The module only steps the optimisers: one
ITERATION is one discriminator step (when there is a discriminator; not counted) then one generator
step, so ``global_step`` counts iterations and ``trainer.max_steps``, checkpoint and EMA periods are
in iterations. Besides that it owns the process (``GaussianDiffusion`` from the schedule config),
sampling with a sampler object (``siddm_lab.diffusion.samplers``) and the non-finite loss guard;
periodic evaluation is a callback (``siddm_lab.callbacks.PeriodicEvaluation``). All formulas live in
``siddm_lab.diffusion``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import torch
from torch import nn

from siddm_lab.diffusion import Denoiser, GANParts, GaussianDiffusion, RandomSource, check_sampler, prepare_sampler
from siddm_lab.errors import ConfigError, NonFiniteLossError
from siddm_lab.utils.lightning_compat import step_without_counting

log = logging.getLogger(__name__)


class DiffusionModule(L.LightningModule):
    """Base LightningModule: generator + optional discriminator + objective.

    Args:
        generator: the network trained to produce samples (``(x_t, t) -> output`` for a denoiser, which
            the objective sees as ``(x_t, t, z=None)``; ``(x_t, t, z) -> x0'`` for a GAN generator).
        diffusion: the process as a ``GaussianDiffusion`` (or its kwargs for ``from_schedule``) or
            ``CosineContinuousTime``.
        objective: a loss object with ``d_terms`` / ``g_terms`` (``siddm_lab.diffusion.losses``).
        discriminator: None, a module, or a factory ``(joint, cond_head, aux_head) -> module`` (a Hydra
            ``_partial_``, ``conf/discriminator``) called with ``objective.discriminator_heads()``.
        optimizer / optimizer_d: ``params -> Optimizer`` partials of the generator / discriminator.
        lr_scheduler / lr_scheduler_d: ``optimizer -> LRScheduler`` partials or None (stepped per iteration).
        grad_clip / grad_clip_d: max gradient norm per net (None = off).
        log_every_n_steps: how often the training losses are logged (every step costs a device sync).
        data_shape: the shape of one sample (the run passes its datamodule's; None: taken in ``setup``).
    """

    def __init__(self, generator: nn.Module, diffusion: GaussianDiffusion | dict, objective, discriminator=None,
                 optimizer: Callable | None = None, optimizer_d: Callable | None = None,
                 lr_scheduler: Callable | None = None, lr_scheduler_d: Callable | None = None,
                 grad_clip: float | None = None, grad_clip_d: float | None = None, log_every_n_steps: int = 50,
                 data_shape=None):
        super().__init__()
        if isinstance(diffusion, dict):
            diffusion = GaussianDiffusion.from_schedule(**diffusion)
        if optimizer is None:
            raise ConfigError("the model needs an optimizer for its generator (model.optimizer / model.optimizer_g)")
        if discriminator is not None:
            if optimizer_d is None:
                raise ConfigError("a model with a discriminator needs model.optimizer_d")
            if not isinstance(discriminator, nn.Module):
                discriminator = discriminator(**objective.discriminator_heads())
            if getattr(discriminator, "joint", objective.joint) != objective.joint:
                need = "a joint" if objective.joint else "a marginal"
                raise ConfigError(f"{type(objective).__name__} needs {need} discriminator (discriminator.joint="
                                  f"{str(objective.joint).lower()})")
        self.automatic_optimization = False
        self.generator, self.discriminator, self.objective = generator, discriminator, objective
        self.diffusion = diffusion
        self.optimizer_factory, self.optimizer_d_factory = optimizer, optimizer_d
        self.lr_scheduler_factory, self.lr_scheduler_d_factory = lr_scheduler, lr_scheduler_d
        self.grad_clip, self.grad_clip_d = grad_clip, grad_clip_d
        self.log_every_n_steps = max(1, int(log_every_n_steps))
        self.rng = RandomSource()  # the global RNG (StepSeed reseeds it every step)
        self.member_seeds: list[int] | None = None
        # the shape of one sample: given by the run (its datamodule's), else from the datamodule (``setup``) or the
        # checkpoint (``on_load_checkpoint``)
        self.data_shape: tuple[int, ...] | None = None if data_shape is None else tuple(int(d) for d in data_shape)
        self.global_step_at_save = 0  # the iteration a loaded checkpoint was saved at
        self._train_seconds_offset, self._eval_seconds = 0.0, 0.0

    # Under DDP (which wraps the whole module) the D step leaves G's parameters out and the G step
    # D's: the trainer is built with find_unused_parameters=True for such a model.
    @property
    def ddp_find_unused_parameters(self) -> bool:
        return self.discriminator is not None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the run's config is added by the RunConfig callback (siddm_lab.callbacks.RunConfig)
        checkpoint["siddm_train_seconds"] = self.train_seconds()
        if self.data_shape is not None:
            checkpoint["data_shape"] = list(self.data_shape)

    def on_train_start(self) -> None:
        self._fit_t0, self._eval_seconds = time.perf_counter(), 0.0
        if self.trainer.is_global_zero:
            log.info("training started at step %d", self.global_step)

    def on_train_end(self) -> None:
        # Spawned DDP processes hand back only weights and callback_metrics: keep the step count there.
        self.trainer.callback_metrics["trainer/global_step"] = torch.tensor(float(self.global_step))

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and self.data_shape is None:
            self.data_shape = tuple(dm.data_shape)

    def configure_optimizers(self):
        opts = [self.optimizer_factory(params=self.generator.parameters())]
        if self.discriminator is not None:
            opts.append(self.optimizer_d_factory(params=self.discriminator.parameters()))
        scheds = []
        for factory, opt in zip((self.lr_scheduler_factory, self.lr_scheduler_d_factory), opts):
            if factory is not None:
                scheds.append({"scheduler": factory(optimizer=opt), "interval": "step"})
        return opts, scheds

    # ------------------------------------------------------------------ training
    def parts(self, rng: RandomSource | None = None) -> GANParts:
        """What the objective needs: the nets, the process, the latent sampler and the noise source."""
        rng = rng or self.rng
        return GANParts(self.generator, self.discriminator, self.diffusion, lambda x: self.sample_z(x, rng), rng)

    def sample_z(self, x: torch.Tensor, rng: RandomSource | None = None):
        """The generator's latent for x (None: a denoiser takes none)."""
        return None

    def _clip(self, opt, net: nn.Module, max_norm: float | None) -> None:
        if max_norm is None:
            return
        if self.members is None:
            self.clip_gradients(opt, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")
            return
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        sq = sum(g.pow(2).flatten(1).sum(1) for g in grads)  # per member
        scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.reshape(-1, *((1,) * (g.dim() - 1))))

    def _update(self, opt, terms: dict, net: nn.Module, max_norm, name: str, counted: bool) -> torch.Tensor:
        loss = sum(terms.values())
        self.check_finite(name, loss.detach())
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss.sum() if loss.dim() else loss)
        self._clip(opt, net, max_norm)
        if counted:
            opt.step()
        else:
            self.step_uncounted(opt)
        return loss

    def training_step(self, batch, batch_idx):
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        parts = self.parts()
        iteration = self.global_step
        d: dict = {}
        logged: dict = {}
        if self.discriminator is not None:
            opt_d = opts[1]
            with self.toggled_optimizer(opt_d):
                d = self.objective.d_terms(parts, batch, iteration)
                logged["train/loss_d"] = self._update(opt_d, d, self.discriminator, self.grad_clip_d, "train/loss_d",
                                                      counted=False)
            with self.toggled_optimizer(opts[0]):
                g = self.objective.g_terms(parts, batch, iteration)
                logged["train/loss_g"] = self._update(opts[0], g, self.generator, self.grad_clip, "train/loss_g",
                                                      counted=True)
        else:
            g = self.objective.g_terms(parts, batch, iteration)
            logged["train/loss"] = self._update(opts[0], g, self.generator, self.grad_clip, "train/loss", counted=True)
        scheds = self.lr_schedulers()
        for sched in scheds if isinstance(scheds, list) else [scheds]:
            if sched is not None:
                sched.step()
        if batch_idx % self.log_every_n_steps == 0:  # means over the members of an ensemble
            logged.update({f"train/{k}": v for k, v in {**d, **g}.items() if k != "loss"})
            self.log_dict({k: v.detach().mean() for k, v in logged.items()}, prog_bar="train/loss" in logged)

    # ------------------------------------------------------------------ guards
    def check_finite(self, name: str, value: torch.Tensor) -> None:
        """Stop with a clear message if a loss is NaN/inf (before it reaches the weights)."""
        if torch.isfinite(value).all():
            return
        if self.members is not None:
            bad = [s for s, v in zip(self.member_seeds, value.tolist()) if not torch.isfinite(torch.tensor(v))]
            name = f"{name} of the ensemble members with seeds {bad}"
        # at step 0 of a fresh run nothing has been trained, so no checkpoint is written (ExceptionCheckpoint)
        kept = ("no checkpoint is written: nothing had been trained yet" if self.global_step == 0
                else "the last checkpoint is kept")
        raise NonFiniteLossError(
            f"loss '{name}' is {value.item() if value.numel() == 1 else 'non-finite'} at step "
            f"{self.global_step}; training stopped before the update ({kept}). "
            f"Lower the learning rate or enable gradient clipping."
        )

    # ------------------------------------------------------------------ sampling
    def predict_x0_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0', ε') of the model at (x_t, t): what a step sampler needs."""
        raise NotImplementedError

    def denoiser(self, rng: RandomSource | None = None) -> Denoiser:
        """What a sampler sees of this model (``siddm_lab.diffusion.samplers.Denoiser``); a model that draws
        latents draws them from ``rng``."""
        return Denoiser(self.diffusion, x0_eps=self.predict_x0_eps,
                        description=f"this {type(self).__name__} (a denoiser)")

    def default_sampler(self):
        """The sampler used when none is configured."""
        raise NotImplementedError

    def get_sampler(self, sampler=None, extra=(), what: str | None = None, hint: str | None = None):
        """The sampler that runs for this model: ``sampler``, else ``default_sampler()``; a partial
        (``conf/sampler``) is bound to this model's process. Checked against the model (``check_sampler``: one
        refusal message; ``extra`` requirements of the use, named ``what``) and resolved (a student's own plan)."""
        if sampler is None:
            sampler = self.default_sampler()
        if not hasattr(sampler, "requirements"):  # an unbound sampler factory (a conf/sampler partial)
            cls = getattr(sampler, "func", None)
            if isinstance(cls, type) and hasattr(cls, "requires"):  # the model first, then the settings
                check_sampler(cls, self.denoiser(), extra, what, hint)
            sampler = sampler(diffusion=self.diffusion)
        return prepare_sampler(sampler, self.denoiser(), extra, what, hint)

    def sampling_rng(self, seed: int | None) -> RandomSource:
        """Where one batch's sampling noise comes from: a generator on the model's device seeded with ``seed``
        (None: the global RNG)."""
        if seed is None:
            return RandomSource()
        return RandomSource.single(torch.Generator(self.device).manual_seed(int(seed)))

    def draw(self, sampler, x_T: torch.Tensor, seed: int | None, progress: bool = False) -> torch.Tensor:
        """One batch of samples from x_T with a prepared ``sampler`` (``get_sampler``); its noise and the
        model's latents come from ``sampling_rng(seed)``."""
        rng = self.sampling_rng(seed)
        return sampler.sample(self.denoiser(rng), x_T, rng, progress=progress)

    @torch.no_grad()
    def sample(self, n: int, sampler=None, generator: torch.Generator | None = None, batch_size: int | None = None,
               progress: bool = False) -> torch.Tensor:
        """n samples [n, *data_shape] ([E, n, ...] for an ensemble) with ``sampler`` (``get_sampler``).
        x_T and the seeds of each batch's noise come from ``generator`` (on CPU, so results do not
        depend on the device)."""
        if self.data_shape is None:
            raise RuntimeError("data_shape is unknown: attach a datamodule or set model.data_shape")
        sampler = self.get_sampler(sampler)
        if hasattr(sampler, "reset_stats"):  # a fixed-point sampler's accounting covers this call's batches
            sampler.reset_stats()
        bs = batch_size or n
        was_training = self.training
        self.eval()
        out = []
        try:
            for i in range(0, n, bs):
                m = min(bs, n - i)
                prior = getattr(self.diffusion, "prior_sample", None)
                x_T = (prior((m, *self.data_shape), generator) if prior is not None
                       else torch.randn((m, *self.data_shape), generator=generator)).to(self.device)
                seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else None
                out.append(self.draw(sampler, x_T, seed, progress).cpu())
        finally:
            self.train(was_training)
        return torch.cat(out, dim=0 if self.members is None else 1)

    def sample_distributed(self, n: int, seed: int, sampler=None) -> torch.Tensor:
        """n samples drawn once across all ranks: each rank draws its share with its own seed
        (seed + rank), and every rank gets the gathered set (rank order, cut to n). An ensemble gives
        [E, n, ...]."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            return self.sample(n, sampler, generator=torch.Generator().manual_seed(seed))
        rank = self.trainer.global_rank
        share = -(-n // world)
        local = self.sample(share, sampler, generator=torch.Generator().manual_seed(seed + rank))
        gathered = self.all_gather(local.to(self.device))  # [world, (E,) share, ...]
        if self.members is not None:
            gathered = gathered.transpose(0, 1)  # [E, world, share, ...]
            return gathered.reshape(self.members, world * share, *local.shape[2:])[:, :n].cpu()
        return gathered.reshape(world * share, *local.shape[1:])[:n].cpu()

    # ------------------------------------------------------------------ ensembles (see models.siddm)
    @property
    def members(self) -> int | None:
        """E for an ensemble of E models trained as one module, None for a single model."""
        return None

    def member_outputs(self, samples: torch.Tensor, out_dir: Path | None):
        """(seed or None, output folder, samples) per model: the run folder for a single model,
        ``seed_<s>/`` inside it for each member of an ensemble."""
        if self.members is None:
            return [(None, out_dir, samples)]
        return [(s, None if out_dir is None else Path(out_dir) / f"seed_{s}", samples[k])
                for k, s in enumerate(self.member_seeds)]

    # ------------------------------------------------------------------ iterations and time
    @staticmethod
    def step_uncounted(opt) -> None:
        """``opt.step()`` without advancing ``global_step``: Lightning counts every optimizer step of
        manual optimisation, so a model that steps two optimizers per batch (a GAN) counts only the
        second and ``global_step`` is the number of iterations (``lightning_compat.step_without_counting``)."""
        step_without_counting(opt)

    def train_seconds(self) -> float:
        """Training wall time so far, periodic evaluations excluded (carried across a resume)."""
        start = getattr(self, "_fit_t0", None)
        if start is None:
            return self._train_seconds_offset
        return self._train_seconds_offset + time.perf_counter() - start - self._eval_seconds

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._train_seconds_offset = float(checkpoint.get("siddm_train_seconds", 0.0))
        if checkpoint.get("data_shape"):
            self.data_shape = tuple(checkpoint["data_shape"])
        self.global_step_at_save = int(checkpoint.get("global_step", 0))

    @contextmanager
    def untimed(self):
        """A stretch (a periodic evaluation) left out of ``train_seconds``: yields its ``start`` time and the
        ``train_seconds`` before it."""
        clock = SimpleNamespace(start=time.perf_counter(), train_seconds=self.train_seconds())
        try:
            yield clock
        finally:
            self._eval_seconds += time.perf_counter() - clock.start

    def history_extras(self) -> dict:
        """What a periodic evaluation records besides its metrics (e.g. a distillation round)."""
        return {}
