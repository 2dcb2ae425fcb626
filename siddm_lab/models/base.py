"""Shared base of the diffusion LightningModules (DDPM, DDIM, SIDDM).

It owns what every model needs besides its losses: the ``GaussianDiffusion`` built from the
schedule config, optimiser/LR-scheduler construction, the sampling entry point
(``sample``), periodic sample evaluation during validation, and the non-finite loss guard.
Subclasses implement ``training_step`` and ``predict_x0_eps`` (network output -> x0', ε').
All formulas are called from ``siddm_lab.diffusion``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

from siddm_lab.diffusion import GaussianDiffusion, build_sampler, make_timesteps, sample_loop
from siddm_lab.errors import ConfigError, NonFiniteLossError

log = logging.getLogger(__name__)

DEFAULT_SAMPLING = {"name": "ddpm", "variance_type": "fixed_small", "eta": 0.0, "steps": None,
                    "subsequence": {"name": "uniform"}, "clip_x0": None, "batch_size": 1000}


def sampler_and_timesteps(diffusion: GaussianDiffusion, sampling: dict, subsequence: dict | None = None):
    """(sampler, decreasing timesteps) from sampler settings and a sub-sequence spec.

    ``steps`` null means every timestep; otherwise the sub-sequence ``subsequence['name']``
    (default uniform) with S = steps.
    """
    sub = dict(subsequence if subsequence is not None else sampling.get("subsequence") or {"name": "uniform"})
    steps = sampling.get("steps")
    name = sub.pop("name", "uniform")
    if steps is None and name in ("uniform", "leading", "linspace", "trailing", "quadratic"):
        name = "full"
    timesteps = make_timesteps(name, diffusion.num_timesteps, steps, **sub)
    sampler = build_sampler(diffusion, sampling.get("name", "ddpm"), sampling.get("variance_type", "fixed_small"),
                            sampling.get("eta", 0.0))
    return sampler, timesteps


class DiffusionModule(L.LightningModule):
    """Base LightningModule.

    Args:
        diffusion: the schedule as a ``GaussianDiffusion`` (or its kwargs for ``from_schedule``).
        optimizer: ``params -> torch.optim.Optimizer`` (a Hydra ``_partial_``).
        lr_scheduler: ``optimizer -> LRScheduler`` or None; stepped every optimizer step.
        sampling: the model's own sampler (periodic and final evaluation): ``name`` (ddpm | ddim),
            ``variance_type`` (ddpm), ``eta`` (ddim), ``steps`` (null = all T), ``subsequence``
            (a ``make_timesteps`` spec, default uniform), ``clip_x0``, ``batch_size``.
        eval_num_samples: samples drawn at each validation for ``datamodule.evaluate``
            (0 disables periodic sample evaluation).
        log_every_n_steps: how often the training loss is logged (logging every step costs
            a device sync).
    """

    def __init__(self, diffusion: GaussianDiffusion | dict, optimizer: Callable, lr_scheduler: Callable | None = None,
                 sampling: dict | None = None, eval_num_samples: int = 1000, log_every_n_steps: int = 50):
        super().__init__()
        if isinstance(diffusion, dict):
            diffusion = GaussianDiffusion.from_schedule(**diffusion)
        self.diffusion = diffusion
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.sampling = {**DEFAULT_SAMPLING, **(dict(sampling) if sampling else {})}
        if eval_num_samples < 0:
            raise ConfigError(f"model.eval_num_samples must be >= 0, got {eval_num_samples}")
        self.eval_num_samples = eval_num_samples
        self.log_every_n_steps = max(1, int(log_every_n_steps))
        self.data_shape: tuple[int, ...] | None = None
        self.output_dir: Path | None = None
        # The resolved run config (plain containers), stored in checkpoints so a checkpoint alone
        # rebuilds its model; set by the train entry point.
        self.run_config: dict | None = None
        self._train_seconds_offset, self._eval_seconds = 0.0, 0.0

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
        opt = self.optimizer_factory(params=self.parameters())
        if self.lr_scheduler_factory is None:
            return opt
        sched = self.lr_scheduler_factory(optimizer=opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ guards
    def check_finite(self, name: str, value: torch.Tensor) -> None:
        """Stop with a clear message if a loss is NaN/inf (before it reaches the weights)."""
        if not torch.isfinite(value).all():
            raise NonFiniteLossError(
                f"loss '{name}' is {value.item() if value.numel() == 1 else 'non-finite'} at step "
                f"{self.global_step}; training stopped before the update (the last checkpoint is kept). "
                f"Lower the learning rate or enable gradient clipping."
            )

    # ------------------------------------------------------------------ sampling
    def predict_x0_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def default_sampler_and_timesteps(self):
        return sampler_and_timesteps(self.diffusion, self.sampling)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, sampler=None, timesteps=None,
               batch_size: int | None = None, progress: bool = False) -> torch.Tensor:
        """Draw n samples [n, *data_shape] with ``sampler`` over ``timesteps`` (default: the
        model's own sampler over all T steps). Noise comes from ``generator`` (on CPU, so
        results do not depend on the device)."""
        if self.data_shape is None:
            raise RuntimeError("data_shape is unknown: attach a datamodule or set model.data_shape")
        if sampler is None or timesteps is None:
            default_sampler, default_timesteps = self.default_sampler_and_timesteps()
            sampler = sampler or default_sampler
            timesteps = timesteps if timesteps is not None else default_timesteps
        bs = batch_size or self.sampling["batch_size"]
        was_training = self.training
        self.eval()
        out = []
        try:
            for i in range(0, n, bs):
                m = min(bs, n - i)
                x_T = torch.randn((m, *self.data_shape), generator=generator).to(self.device)
                g = None
                if generator is not None:
                    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
                    g = torch.Generator(self.device).manual_seed(seed)
                out.append(sample_loop(self.predict_x0_eps, sampler, x_T, timesteps, generator=g,
                                       progress=progress, allow_repeats=True).cpu())
        finally:
            self.train(was_training)
        return torch.cat(out)

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
    def on_validation_epoch_start(self) -> None:
        # Runs after the EMA callback swapped the averaged weights in.
        if self.trainer.sanity_checking or self.eval_num_samples == 0:
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "evaluate"):
            return
        t0 = time.perf_counter()
        train_seconds = self.train_seconds()
        samples = self.sample_distributed(self.eval_num_samples, seed=1234)
        if self.trainer.is_global_zero:
            sample_seconds = time.perf_counter() - t0
            per_member = []
            for seed, out_dir, x in self.member_outputs(samples, self.output_dir):
                metrics = {k: float(v) for k, v in dm.evaluate(x).items()}
                per_member.append((seed, out_dir, metrics))
                if out_dir is not None:
                    append_history(out_dir, {"iteration": int(self.global_step), "train_seconds": train_seconds,
                                             "sample_seconds": sample_seconds, **metrics})
            logged = {f"val/{k}": sum(m[k] for _, _, m in per_member) / len(per_member) for k in per_member[0][2]}
            if self.members is not None:
                logged.update({f"val/seed_{s}/{k}": v for s, _, m in per_member for k, v in m.items()})
            logged["val/sample_seconds"] = sample_seconds
            logged["val/train_seconds"] = train_seconds
            self.log_dict(logged, on_epoch=True, sync_dist=False, rank_zero_only=True)
            for seed, out_dir, x in self.member_outputs(samples, self.output_dir):
                if out_dir is None:
                    continue
                title = f"iteration {self.global_step}" + ("" if seed is None else f", seed {seed}")
                png = dm.save_samples(x, Path(out_dir) / "samples", stem=f"step_{self.global_step:07d}", title=title)
                for logger in self.loggers:
                    if hasattr(logger, "log_image") and (seed is None or seed == self.member_seeds[0]):
                        logger.log_image(key="val/samples", images=[str(png)], step=self.global_step)
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
