"""Training runs, the library side of ``siddm-train``: build the model (or an ensemble of seeds) and the
Trainer from a composed config, fit with pre-emption handling, evaluate the result through
``siddm_lab.evaluation`` and write each model's metrics.json."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from siddm_lab.errors import ConfigError
from siddm_lab.utils.loggers import adopt_csv_header, log
from siddm_lab.utils.run_files import write_json


def eval_samplers(cfg: DictConfig, model) -> list:
    """The samplers of the final evaluation: ``sampler`` bound to the model's process, once per step
    count of ``eval.steps`` (null = ``sampler.steps``; a list evaluates each, the first is the primary)."""
    factory = instantiate(cfg.sampler)
    steps = cfg.eval.get("steps")
    if steps is None:
        return [factory(diffusion=model.diffusion)]
    steps = [steps] if isinstance(steps, int) else list(steps)
    return [factory(diffusion=model.diffusion, steps=int(k)) for k in steps]


def evaluate_model(model, datamodule, cfg: DictConfig, out_dir: Path) -> list[dict]:
    """The final evaluation (``siddm_lab.evaluation.evaluate``, EMA weights): ``eval.num_samples`` samples
    per sampler of ``eval_samplers``, the primary one's saved as samples.npz/png, each model's metrics
    (per member of an ensemble: ``seed_<s>/``) with those of other step counts as ``<metric>@<steps>``."""
    from siddm_lab.evaluation import evaluate

    samplers = eval_samplers(cfg, model)
    results: dict = {}
    for i, sampler in enumerate(samplers):
        per_model = evaluate(model, sampler, datamodule, int(cfg.eval.num_samples), int(cfg.eval.seed), out_dir,
                             batch_size=int(cfg.eval.batch_size), stem="samples" if i == 0 else None)
        for r in per_model:
            entry = results.setdefault(r["seed"], {"seed": cfg.seed if r["seed"] is None else r["seed"],
                                                  "dir": r["dir"]})
            metrics = {k: v for k, v in r.items() if k not in ("seed", "dir")}
            if i == 0:
                entry.update(metrics)
            if len(samplers) > 1:
                entry.update({f"{k}@{sampler.steps}": v for k, v in metrics.items()
                              if isinstance(v, (int, float)) and k != "num_samples"})
    return list(results.values())


def build_model(cfg: DictConfig, datamodule):
    """The model of ``cfg.model``, initialised after seeding with ``seed``; with ``seeds=[s0, s1, ...]``
    an ensemble of one model per seed (each initialised after seeding with its own seed, as its single
    run would be) trained as one module. The datamodule's batches follow the same seeds."""
    seeds = cfg.get("seeds")
    if seeds is None:
        model = instantiate(cfg.model)
        datamodule.set_seeds(seed=int(cfg.seed))
        return model
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds} is invalid: expected a list of distinct non-negative integers "
                          f"(one ensemble member per seed), or null for a single run with `seed`")
    models = []
    for s in seeds:
        L.seed_everything(s, workers=True, verbose=False)
        models.append(instantiate(cfg.model))
    if not hasattr(type(models[0]), "stack"):
        raise ConfigError(f"seeds=[...] trains an ensemble in one process, which {type(models[0]).__name__} does "
                          f"not support (DDGAN/SIDDM toy models do); sweep the seeds instead: -m seed=0,1,2")
    datamodule.set_seeds(member_seeds=seeds)
    return type(models[0]).stack(models, seeds)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def build_trainer(cfg: DictConfig, callbacks, loggers, model=None) -> L.Trainer:
    """The Trainer of ``cfg.trainer``. A DDP strategy (``trainer.strategy._target_: ...DDPStrategy``) is
    built here with two additions:

    - a model that updates its nets in separate steps (a discriminator: the D step does not touch G and
      the G step does not update D) gets ``find_unused_parameters=True``: DDP wraps the whole module and
      must look for the parameters each step leaves out;
    - inside a local Hydra multirun, ranks started by re-running the command would re-run the whole sweep
      (Lightning #11300, Hydra #2070): the job spawns its processes instead (one output dir per job, a
      failing rank fails the job). Processes started by SLURM or torchrun are used as they are.
    """
    strategy = cfg.trainer.get("strategy")
    if not (OmegaConf.is_dict(strategy) and str(strategy.get("_target_", "")).endswith("DDPStrategy")):
        return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    extra = {}
    if getattr(model, "ddp_find_unused_parameters", False):
        extra["find_unused_parameters"] = True
    if _in_multirun() and strategy.get("start_method", "popen") == "popen" and not _processes_started_outside():
        log.warning("a DDP job inside a local multirun would re-run the sweep in every rank: it runs its processes "
                    "with start_method=spawn instead (on a cluster use hydra/launcher=submitit_slurm, one task "
                    "per device)")
        extra["start_method"] = "spawn"
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, strategy=instantiate(strategy, **extra))


def _processes_started_outside() -> bool:
    """Whether SLURM or torchrun started this job's processes (Lightning then starts none)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return SLURMEnvironment.detect() or TorchElasticEnvironment.detect()


def _sigusr1_as_sigterm() -> None:
    """SIGUSR1 (the usual SLURM pre-emption warning) stops the run like SIGTERM: Lightning writes the
    on-exception checkpoint and the process exits with 143. Under SLURM with auto-requeue
    Lightning's own SIGUSR1 handler (checkpoint + requeue) is left in place."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not hasattr(signal, "SIGUSR1") or SLURMEnvironment.detect():
        return
    signal.signal(signal.SIGUSR1, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))


def fit(trainer: L.Trainer, model, datamodule, ckpt_path, out_dir: Path) -> dict:
    """``trainer.fit`` (a termination signal or SIGUSR1 stops it with the on-exception checkpoint and exit
    status 143), then the run's training metrics: wall time, iterations, the last logged train/val values."""
    t0 = time.perf_counter()
    _sigusr1_as_sigterm()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        log.error("stopped by a termination signal at step %d; the checkpoint is %s; continue with "
                  "ckpt_path=last (same hydra.run.dir)", trainer.global_step,
                  out_dir / "checkpoints" / "on_exception.ckpt")
        raise SystemExit(128 + signal.SIGTERM) from None
    train_seconds = time.perf_counter() - t0
    if trainer.interrupted:
        log.warning("training was interrupted at step %d; checkpoints are in %s", trainer.global_step,
                    out_dir / "checkpoints")
    steps = trainer.global_step or int(trainer.callback_metrics.get("trainer/global_step", 0))
    metrics = {"train_seconds": train_seconds, "global_step": steps}
    if model.members is not None:
        metrics["ensemble_members"] = model.members
    for k, v in trainer.callback_metrics.items():
        if (k.startswith("val/") or k.startswith("train/")) and "/seed_" not in k:
            metrics[k] = float(v)
    return metrics


def finish(trainer: L.Trainer, model, datamodule, cfg: DictConfig, out_dir: Path, metrics: dict) -> dict:
    """Evaluate (``evaluate_model``), write metrics.json per model, send the final metrics to the loggers.
    Returns the run's metrics (the members' mean and each member's for an ensemble)."""
    per_model = [{**metrics, **r} for r in evaluate_model(model, datamodule, cfg, out_dir)]
    for result in per_model:
        write_json(Path(result.pop("dir")) / "metrics.json", result)
        shown = {k: result[k] for k in ("seed", "modes_covered", "hq_ratio", "mode_kl", "fd_2d", "mmd_poly2",
                                        "nfe", "sample_seconds", "train_seconds") if k in result}
        log.info("results: %s", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in shown.items()))
    if model.members is None:
        log.info("outputs in %s (metrics.json, samples.png)", out_dir)
        log_final(trainer, per_model[0], out_dir / "samples.png")
        return per_model[0]
    log.info("outputs in %s: one seed_<s>/ folder per ensemble member (metrics.json, samples.png)", out_dir)
    mean = {k: sum(r[k] for r in per_model) / len(per_model) for k, v in per_model[0].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed"}
    log_final(trainer, mean, out_dir / f"seed_{model.member_seeds[0]}" / "samples.png")
    return {**mean, "members": per_model}


def log_final(trainer: L.Trainer, metrics: dict, png: Path) -> None:
    """Send the final metrics and sample plot to the loggers, then close them (one W&B run per job)."""
    numeric = {f"final/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    adopt_csv_header(trainer.loggers)  # spawned DDP ranks may have written metrics.csv
    for logger in trainer.loggers:
        logger.log_metrics(numeric, step=trainer.global_step)
        if hasattr(logger, "log_image") and png.is_file():
            logger.log_image(key="final/samples", images=[str(png)], step=trainer.global_step)
        logger.finalize("success")
        if type(logger).__name__ == "WandbLogger":
            import wandb

            wandb.finish()
