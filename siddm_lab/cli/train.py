"""``siddm-train`` / ``python -m siddm_lab.train``: train a model, then evaluate it.

Every run writes to its own output dir: ``config.yaml`` (resolved), ``checkpoints/``,
``metrics.json``, ``samples.npz`` + ``samples.png``, and logger files.
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from siddm_lab.cli.common import CONF_DIR, log, user_errors
from siddm_lab.config import validate
from siddm_lab.errors import ConfigError
from siddm_lab.resume import resolve_ckpt_path
from siddm_lab.utils.loggers import adopt_csv_header, build_callbacks, build_loggers
from siddm_lab.utils.run_files import write_json, write_resolved_config


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
    """The Trainer of ``cfg.trainer``, with two DDP adjustments:

    - a model that updates its nets in separate steps (SIDDM/DDGAN: the D step does not touch G and
      the G step does not update D) sets ``ddp_find_unused_parameters``; DDP wraps the whole
      module, so it must then look for the parameters each step leaves out;
    - inside a local Hydra multirun, a DDP strategy that would start its ranks by re-running the
      command (which re-runs the whole sweep: Lightning #11300, Hydra #2070) gets spawned processes
      instead: one output dir per job, and a failing rank fails the job. Processes started by SLURM
      or torchrun are used as they are.
    """
    from lightning.pytorch.strategies import DDPStrategy

    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    strategy = trainer.strategy
    if not isinstance(strategy, DDPStrategy):
        return trainer
    kwargs = {"process_group_backend": strategy._process_group_backend, "start_method": strategy._start_method,
              **strategy._ddp_kwargs}
    changed = False
    if getattr(model, "ddp_find_unused_parameters", False) and not kwargs.get("find_unused_parameters"):
        kwargs["find_unused_parameters"] = True
        changed = True
    if _in_multirun() and type(strategy.launcher).__name__ == "_SubprocessScriptLauncher":
        log.warning("trainer.strategy=ddp inside a local multirun would re-run the sweep in every rank: "
                    "this job runs its %d processes with start_method=spawn instead "
                    "(on a cluster use hydra/launcher=submitit_slurm, one task per device)", trainer.num_devices)
        kwargs["start_method"] = "spawn"
        changed = True
    if changed:
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, strategy=DDPStrategy(**kwargs))
    return trainer


def _sigusr1_as_sigterm() -> None:
    """SIGUSR1 (the usual SLURM pre-emption warning) stops the run like SIGTERM: Lightning writes the
    on-exception checkpoint and the process exits with 143. Under SLURM with auto-requeue
    Lightning's own SIGUSR1 handler (checkpoint + requeue) is left in place."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not hasattr(signal, "SIGUSR1") or SLURMEnvironment.detect():
        return
    signal.signal(signal.SIGUSR1, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))


def train(cfg: DictConfig) -> dict:
    validate(cfg)
    # Lightning warns (with a code snippet) that a manually optimised model's checkpoints hold the weights
    # after the step: that is what a resumed run needs, and the GAN models always step that way.
    warnings.filterwarnings("ignore", message=".*Using ModelCheckpoint with manual optimization.*")
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    out_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg, out_dir)  # before anything is written to out_dir
    if rank_zero_only.rank == 0:  # DDP ranks started by re-running the command share the folder
        write_resolved_config(cfg, out_dir)

    datamodule = instantiate(cfg.dataset)
    model = build_model(cfg, datamodule)
    model.data_shape = tuple(datamodule.data_shape)
    model.sampler = instantiate(cfg.sampler)(diffusion=model.diffusion)  # periodic evaluation's sampler
    model.output_dir = out_dir
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    loggers = build_loggers(cfg)
    trainer = build_trainer(cfg, build_callbacks(cfg, has_logger=bool(loggers)), loggers, model)

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
    if not trainer.is_global_zero:
        return metrics
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


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@user_errors
def main(cfg: DictConfig):
    metrics = train(cfg)
    key = cfg.get("optimized_metric")
    return metrics.get(key) if key else None


if __name__ == "__main__":
    main()
