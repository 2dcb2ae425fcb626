"""The shared base of the diffusion LightningModules (DDPM, DDIM, SIDDM, DDGAN).

Every module is a GENERATOR (a denoiser f(x_t, t), or a GAN generator G(x_t, t, z)), an optional
DISCRIMINATOR and an OBJECTIVE (``siddm_lab.diffusion.losses``) that returns the discriminator's
terms (``d_terms``) and the generator's (``g_terms``). The module only steps the optimisers: one
ITERATION is one discriminator step (when there is a discriminator; not counted) then one generator
step, so ``global_step`` counts iterations and ``trainer.max_steps``, checkpoint and EMA periods are
in iterations. Besides that it owns the process (``GaussianDiffusion`` from the schedule config),
sampling with a sampler object (``siddm_lab.diffusion.samplers``), periodic sample evaluation and
the non-finite loss guard. All formulas live in ``siddm_lab.diffusion``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch import nn

from siddm_lab.diffusion import Denoiser, GANParts, GaussianDiffusion, RandomSource, prepare_sampler
from siddm_lab.errors import ConfigError, NonFiniteLossError

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
        eval_num_samples: samples drawn at each validation for the data's metrics (0 = off).
        log_every_n_steps: how often the training losses are logged (every step costs a device sync).
    """

    def __init__(self, generator: nn.Module, diffusion: GaussianDiffusion | dict, objective, discriminator=None,
                 optimizer: Callable | None = None, optimizer_d: Callable | None = None,
                 lr_scheduler: Callable | None = None, lr_scheduler_d: Callable | None = None,
                 grad_clip: float | None = None, grad_clip_d: float | None = None,
                 eval_num_samples: int = 1000, log_every_n_steps: int = 50):
        super().__init__()
        if isinstance(diffusion, dict):
            diffusion = GaussianDiffusion.from_schedule(**diffusion)
        if optimizer is None:
            raise ConfigError("the model needs an optimizer for its generator (model.optimizer / model.optimizer_g)")
        if eval_num_samples < 0:
            raise ConfigError(f"model.eval_num_samples must be >= 0, got {eval_num_samples}")
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
        self.eval_num_samples = eval_num_samples
        self.log_every_n_steps = max(1, int(log_every_n_steps))
        self.rng = RandomSource()  # the global RNG (StepSeed reseeds it every step)
        self.member_seeds: list[int] | None = None
        # The sampler of periodic evaluation (``conf/sampler``, bound to this process by the train entry;
        # None = ``default_sampler()``).
        self.sampler = None
        self.data_shape: tuple[int, ...] | None = None
        self.output_dir: Path | None = None
        # The resolved run config (plain containers), stored in checkpoints so a checkpoint alone
        # rebuilds its model; set by the train entry point.
        self.run_config: dict | None = None
        self._train_seconds_offset, self._eval_seconds = 0.0, 0.0

    # Under DDP (which wraps the whole module) the D step leaves G's parameters out and the G step
    # D's: the trainer is built with find_unused_parameters=True for such a model.
    @property
    def ddp_find_unused_parameters(self) -> bool:
        return self.discriminator is not None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["siddm_train_seconds"] = self.train_seconds()
        if self.run_config is not None:
            checkpoint["siddm_config"] = self.run_config
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
                        description=f"this {type(self).__name__} model (a denoiser)")

    def default_sampler(self):
        """The sampler used when none is configured."""
        raise NotImplementedError

    def get_sampler(self, sampler=None, extra=(), what: str | None = None):
        """The sampler that runs for this model: ``sampler``, else the configured one (``self.sampler``), else
        ``default_sampler()``; a partial (``conf/sampler``) is bound to this model's process. Checked against
        the model (``check_sampler``: one refusal message; ``extra`` requirements of the use, named ``what``)
        and resolved (a student's own plan)."""
        sampler = sampler if sampler is not None else self.sampler
        if sampler is None:
            sampler = self.default_sampler()
        if not hasattr(sampler, "requirements"):  # an unbound sampler factory
            sampler = sampler(diffusion=self.diffusion)
        return prepare_sampler(sampler, self.denoiser(), extra, what)

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

    def sample_distributed(self, n: int, seed: int) -> torch.Tensor:
        """n samples drawn once across all ranks: each rank draws its share with its own seed
        (seed + rank), and every rank gets the gathered set (rank order, cut to n). An ensemble gives
        [E, n, ...]."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            return self.sample(n, generator=torch.Generator().manual_seed(seed))
        rank = self.trainer.global_rank
        share = -(-n // world)
        local = self.sample(share, generator=torch.Generator().manual_seed(seed + rank))
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
        second and ``global_step`` is the number of iterations (Lightning issue 17958)."""
        before, after = opt._on_before_step, opt._on_after_step
        opt._on_before_step = opt._on_after_step = lambda: None
        try:
            opt.step()
        finally:
            opt._on_before_step, opt._on_after_step = before, after

    def train_seconds(self) -> float:
        """Training wall time so far, periodic evaluations excluded (carried across a resume)."""
        start = getattr(self, "_fit_t0", None)
        if start is None:
            return self._train_seconds_offset
        return self._train_seconds_offset + time.perf_counter() - start - self._eval_seconds

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._train_seconds_offset = float(checkpoint.get("siddm_train_seconds", 0.0))

    # ------------------------------------------------------------------ periodic evaluation
    def history_extras(self) -> dict:
        """What a periodic evaluation records besides its metrics (e.g. a distillation round)."""
        return {}

    def on_validation_epoch_start(self) -> None:
        """Sample and score ``eval_num_samples`` with the evaluation sampler (after the EMA callback swapped
        the averaged weights in): logged as ``val/<metric>``, appended to ``history.jsonl``, plotted."""
        if self.trainer.sanity_checking or self.eval_num_samples == 0:
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "save_samples"):
            return
        from siddm_lab.evaluation import score

        t0 = time.perf_counter()
        train_seconds = self.train_seconds()
        samples = self.sample_distributed(self.eval_num_samples, seed=1234)
        if self.trainer.is_global_zero:
            sample_seconds = time.perf_counter() - t0
            out = None if self.output_dir is None else Path(self.output_dir)
            per_member = score(self, samples, dm, out, stem=f"step_{self.global_step:07d}",
                               title=f"iteration {self.global_step}", subdir="samples")
            for r in per_member:
                if r["dir"] is None:
                    continue
                metrics = {k: v for k, v in r.items() if k not in ("seed", "dir", "num_samples", "png")}
                append_history(r["dir"], {"iteration": int(self.global_step), "train_seconds": train_seconds,
                                          "sample_seconds": sample_seconds, **self.history_extras(), **metrics})
                for logger in self.loggers:
                    if hasattr(logger, "log_image") and (r["seed"] is None or r["seed"] == self.member_seeds[0]):
                        logger.log_image(key="val/samples", images=[str(r["png"])], step=self.global_step)
            names = [k for k in per_member[0] if k not in ("seed", "dir", "num_samples", "png")]
            logged = {f"val/{k}": sum(r[k] for r in per_member) / len(per_member) for k in names}
            if self.members is not None:
                logged.update({f"val/seed_{r['seed']}/{k}": r[k] for r in per_member for k in names})
            logged["val/sample_seconds"] = sample_seconds
            logged["val/train_seconds"] = train_seconds
            self.log_dict(logged, on_epoch=True, sync_dist=False, rank_zero_only=True)
        self._eval_seconds += time.perf_counter() - t0


def append_history(out_dir, row: dict) -> Path:
    """One line of ``history.jsonl``: the metrics of a periodic evaluation with the iteration and the
    training time at which they were taken (``siddm-collect --curves`` draws them)."""
    import json

    path = Path(out_dir) / "history.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    return path
