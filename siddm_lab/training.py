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

from siddm_lab.callbacks.checkpoint import ExceptionCheckpoint
from siddm_lab.callbacks.run_config import RunConfig
from siddm_lab.callbacks.signals import EXIT_STATUS, SignalStop, wait_for_launching_rank
from siddm_lab.config import keys_as_set, validate
from siddm_lab.errors import ConfigError, NonFiniteSamplesError
from siddm_lab.utils.lightning_compat import spawned_rank_processes, uses_script_launcher
from siddm_lab.utils.loggers import adopt_csv_header, log
from siddm_lab.utils.run_files import write_json


def eval_samplers(cfg: DictConfig, model) -> list:
    """The samplers of the final evaluation: ``sampler`` bound to the model's process, once per step
    count of ``eval.steps`` (null = ``sampler.steps``; a list evaluates each, the first is the primary),
    each checked against the model (``check_sampler``: a sampler the model cannot serve is refused)."""
    return [model.get_sampler(s) for s in _eval_samplers(cfg, model.diffusion)]


def _eval_samplers(cfg: DictConfig, diffusion) -> list:
    factory = instantiate(cfg.sampler)
    steps = cfg.eval.get("steps")
    if steps is None:
        return [factory(diffusion=diffusion)]
    shown = steps if isinstance(steps, int) else list(steps)
    samplers = []
    for k in [steps] if isinstance(steps, int) else list(steps):
        try:
            samplers.append(factory(diffusion=diffusion, steps=int(k)))
        except ConfigError as e:  # the sampler names the key it was given (sampler.steps): name eval.steps
            what = str(e)
            for key in (f"sampler.steps={k!r}", f"sampler.steps={k}"):
                what = what.replace(key, f"eval.steps={shown}" if isinstance(steps, int) else f"{k}")
            raise ConfigError(what if isinstance(steps, int) else f"eval.steps={shown}: the step count {what}") \
                from None
    return samplers


def check_samplers(cfg: DictConfig) -> None:
    """Build the run's process and the evaluation's samplers for it before anything is written or trained: a
    setting that they refuse (``diffusion.steps``, ``schedule.*``, ``sampler.*``, ``subsequence.*``, a step
    count beyond the schedule in ``sampler.steps`` or ``eval.steps``) stops the run at its start, named as the
    user set it."""
    from siddm_lab.diffusion import GaussianDiffusion

    spec = cfg.model.get("diffusion") if "model" in cfg else None
    if spec is None:
        return
    with keys_as_set(cfg):
        spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec)
        diffusion = instantiate(spec) if "_target_" in spec else GaussianDiffusion.from_schedule(**spec)
        _eval_samplers(cfg, diffusion)


def build_run(cfg: DictConfig) -> tuple:
    """``(datamodule, model)`` of ``cfg`` (the model after ``build_model``), with the final evaluation's samplers
    checked against the model: what a run builds before it writes any file. Every object checks its own
    settings; an error names the key the user set (``siddm_lab.config.keys_as_set``)."""
    with keys_as_set(cfg):
        datamodule = instantiate(cfg.dataset)
        model = build_model(cfg, datamodule)
        eval_samplers(cfg, model)
    return datamodule, model


def preflight(cfg: DictConfig, built: set | None = None) -> None:
    """Everything ``siddm-train`` checks of ``cfg`` before it reads or writes a file (``validate``,
    ``check_samplers``, ``build_run``): run for every job of a sweep before the first one starts
    (``siddm_lab.utils.hydra_hooks.SweepCheck``). ``built``: the resolved settings of the models already built
    (jobs that differ only in other keys, e.g. ``seed``, build theirs once)."""
    validate(cfg)
    check_samplers(cfg)
    key = repr([OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                for k in ("dataset", "model", "seeds", "sampler", "eval") if k in cfg])
    if built is not None and key in built:
        return
    build_run(cfg)
    if built is not None:
        built.add(key)


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
        model = instantiate(cfg.model, data_shape=tuple(datamodule.data_shape))
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
        models.append(instantiate(cfg.model, data_shape=tuple(datamodule.data_shape)))
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
    # not config options: how a run stops on a signal, and the run's config in every checkpoint
    callbacks = [*callbacks, SignalStop(), RunConfig(OmegaConf.to_container(cfg, resolve=True))]
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


def _callback(trainer: L.Trainer, kind):
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


def _started_by_rank_zero(trainer: L.Trainer) -> bool:
    """Whether this process is a rank that rank 0 started by re-running the command."""
    return trainer.local_rank > 0 and uses_script_launcher(trainer) and not _processes_started_outside()


def _stopped(trainer: L.Trainer, stop: SignalStop, out_dir: Path, parent_pid: int, after_training: bool = False):
    """End a run stopped by a termination signal: one message (rank 0), exit status 143."""
    if trainer.is_global_zero:
        saved = getattr(_callback(trainer, ExceptionCheckpoint), "saved", None)
        if after_training:
            where = (f"after its last training iteration ({trainer.global_step}), before the final evaluation; "
                     f"{out_dir / 'checkpoints' / 'last.ckpt'} holds the trained model: evaluate it with "
                     f"ckpt_path=last (same hydra.run.dir)")
        elif _spawned_ranks(trainer):
            newest = previous_checkpoints(out_dir)
            where = ("in the ranks this process spawned (ddp_spawn), which write no on_exception.ckpt"
                     + (": continue from the newest checkpoint with ckpt_path=last (same hydra.run.dir)" if newest
                        else ", and no periodic checkpoint had been written: nothing to resume from"))
        elif saved:
            where = (f"at step {trainer.global_step}; the checkpoint is {saved}; continue with ckpt_path=last "
                     f"(same hydra.run.dir)")
        else:
            newest = previous_checkpoints(out_dir)
            where = (f"at step {trainer.global_step}, before this run completed a training iteration: no new "
                     f"checkpoint" + ("; continue from the newest with ckpt_path=last (same hydra.run.dir)"
                                      if newest else "; nothing to resume from (start the run again)"))
        log.error("stopped by a termination signal %s", where)
    elif _started_by_rank_zero(trainer):
        wait_for_launching_rank(parent_pid, stop.grace_seconds)
    raise SystemExit(EXIT_STATUS)


def _spawned_ranks(trainer: L.Trainer) -> bool:
    """Whether this process spawned the ranks that trained (``ddp_spawn``; it trained nothing itself)."""
    return bool(spawned_rank_processes(trainer))


def previous_checkpoints(out_dir: Path) -> list[Path]:
    return [p for p in (out_dir / "checkpoints" / "last.ckpt", out_dir / "checkpoints" / "on_exception.ckpt")
            if p.is_file()]


def fit(trainer: L.Trainer, model, datamodule, ckpt_path, out_dir: Path) -> dict:
    """``trainer.fit`` (a termination signal or SIGUSR1 stops it on every rank before the same iteration,
    with the on-exception checkpoint and exit status 143: ``SignalStop``), then the run's training
    metrics: wall time, iterations, the last logged train/val values."""
    t0 = time.perf_counter()
    _sigusr1_as_sigterm()
    stop = _callback(trainer, SignalStop)
    parent_pid = os.getppid()
    if stop is not None:
        stop.install(trainer)  # from here on (the ranks' start-up included) a signal is a request to stop
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        _stopped(trainer, stop, out_dir, parent_pid)
    except Exception:
        if stop is None or not stop.requested:
            raise
        # the process that spawned its ranks (ddp_spawn) forwarded the signal: they exited with 143
        _stopped(trainer, stop, out_dir, parent_pid)
    finally:
        if stop is not None:
            stop.restore()
    if stop is not None and stop.requested:  # the signal came after the last iteration's check
        if not trainer.is_global_zero:
            stop.cancel()  # nothing left to do on this rank; rank 0 ends the job
        else:
            _stopped(trainer, stop, out_dir, parent_pid, after_training=True)
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
    try:
        per_model = [{**metrics, **r} for r in evaluate_model(model, datamodule, cfg, out_dir)]
    except NonFiniteSamplesError as e:
        loss = metrics.get("train/loss")
        raise NonFiniteSamplesError(f"the final evaluation stopped: {e}"
                                    + (f" (the last logged training loss is {loss:.3g})" if loss is not None else "")
                                    + f"; no metrics.json is written, the checkpoints in {out_dir / 'checkpoints'} "
                                      f"are kept") from None
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
