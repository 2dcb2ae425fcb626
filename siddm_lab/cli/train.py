"""``siddm-train`` / ``python -m siddm_lab.train``: train a model, then evaluate it.

Every run writes to its own output dir: ``config.yaml`` (resolved), ``checkpoints/``,
``metrics.json``, ``samples.npz`` + ``samples.png``, and logger files.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from siddm_lab.cli.common import (
    CONF_DIR,
    build_callbacks,
    build_loggers,
    log,
    user_errors,
    write_json,
    write_resolved_config,
)
from siddm_lab.config import validate
from siddm_lab.errors import CheckpointError


def evaluate_model(model, datamodule, cfg: DictConfig, out_dir: Path) -> dict:
    """Sample ``eval.num_samples`` with the (EMA) weights, compute the data's metrics, write
    metrics.json and the samples."""
    T = model.diffusion.num_timesteps
    sampler, timesteps = model.default_sampler_and_timesteps()
    g = torch.Generator().manual_seed(int(cfg.eval.seed))
    t0 = time.perf_counter()
    samples = model.sample(int(cfg.eval.num_samples), generator=g, sampler=sampler, timesteps=timesteps,
                           batch_size=int(cfg.eval.batch_size))
    sample_seconds = time.perf_counter() - t0
    metrics = dict(datamodule.evaluate(samples))
    metrics.update(nfe=len(timesteps), sample_seconds=sample_seconds, num_samples=len(samples))
    title = f"{type(model).__name__} T={T} NFE={len(timesteps)}"
    if "modes_covered" in metrics:
        title += f" modes={metrics['modes_covered']} HQ={metrics['hq_ratio']:.2f} FD={metrics['fd_2d']:.3g}"
    datamodule.save_samples(samples, out_dir, stem="samples", title=title)
    return metrics


def resolve_ckpt_path(ckpt_path, ckpt_dir: Path):
    """``None`` (fresh run), ``"last"`` (newest of last.ckpt / on_exception.ckpt in this run's
    folder, chosen by Lightning) or a checkpoint file."""
    existing = sorted(ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    if ckpt_path is None:
        if existing:
            log.warning("%s already holds checkpoints: resuming from the newest (Lightning's default "
                        "with an on-exception checkpoint)", ckpt_dir)
        # Lightning resolves None to "last" when OnExceptionCheckpoint is present; nothing to load
        # in a fresh run folder, which it would announce with a warning.
        warnings.filterwarnings("ignore", message=".*ckpt_path=None.. was called without a model.*")
        warnings.filterwarnings("ignore", message=".*there is no last checkpoint available.*")
        return None
    if ckpt_path == "last":
        if not existing:
            raise CheckpointError(f"ckpt_path=last but {ckpt_dir} holds no checkpoint; resume a run by "
                                  f"pointing hydra.run.dir at its folder, or give ckpt_path=<file.ckpt>")
        return "last"
    if not Path(ckpt_path).is_file():
        raise CheckpointError(f"ckpt_path={ckpt_path} does not exist (give a .ckpt file, or 'last')")
    return str(ckpt_path)


def train(cfg: DictConfig) -> dict:
    validate(cfg)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    out_dir = Path(cfg.paths.output_dir)
    write_resolved_config(cfg, out_dir)

    datamodule = instantiate(cfg.dataset)
    model = instantiate(cfg.model)
    model.data_shape = tuple(datamodule.data_shape)
    model.output_dir = out_dir
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    loggers = build_loggers(cfg)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=build_callbacks(cfg, has_logger=bool(loggers)),
                                     logger=loggers)

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), out_dir / "checkpoints")

    t0 = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    train_seconds = time.perf_counter() - t0
    if trainer.interrupted:
        log.warning("training was interrupted at step %d; checkpoints are in %s", trainer.global_step,
                    out_dir / "checkpoints")

    metrics = {"train_seconds": train_seconds, "global_step": trainer.global_step}
    for k, v in trainer.callback_metrics.items():
        if k.startswith("val/") or k.startswith("train/"):
            metrics[k] = float(v)
    if trainer.is_global_zero:
        metrics.update(evaluate_model(model, datamodule, cfg, out_dir))
        write_json(out_dir / "metrics.json", metrics)
        shown = {k: metrics[k] for k in ("modes_covered", "hq_ratio", "mode_kl", "fd_2d", "mmd_poly2",
                                         "nfe", "sample_seconds", "train_seconds") if k in metrics}
        log.info("results: %s", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in shown.items()))
        log.info("outputs in %s (metrics.json, samples.png)", out_dir)
        log_final(trainer, metrics, out_dir / "samples.png")
    return metrics


def log_final(trainer: L.Trainer, metrics: dict, png: Path) -> None:
    """Send the final metrics and sample plot to the loggers, then close them (one W&B run per job)."""
    numeric = {f"final/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
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
