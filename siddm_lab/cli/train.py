"""``siddm-train`` / ``python -m siddm_lab.train``: train a model, then evaluate it.

Every run writes to its own output dir: ``config.yaml`` (resolved), ``checkpoints/``,
``metrics.json``, ``samples.npz`` + ``samples.png``, and logger files.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from siddm_lab.config import CONF_DIR, validate
from siddm_lab.models.init_from import weights_initialiser
from siddm_lab.resume import resolve_ckpt_path
from siddm_lab.training import build_run, build_trainer, check_samplers, finish, fit
from siddm_lab.utils.entry import optimized_value, user_errors
from siddm_lab.utils.loggers import build_callbacks, build_loggers
from siddm_lab.utils.run_files import accept_output_dir, write_resolved_config
from siddm_lab.utils.threads import apply_threads, local_processes


def train(cfg: DictConfig, init_model=None) -> dict:
    """Train ``cfg``'s model (``init_model(model)`` sets a fresh run's initial weights; ``siddm-distill``
    copies its teacher's; else ``init.ckpt``'s nets, ``siddm_lab.models.init_from``), evaluate it and write its
    metrics."""
    validate(cfg)  # the keys that no object receives
    check_samplers(cfg)  # the process and the samplers check their settings: refused before any work
    apply_threads(cfg.get("threads", "auto"), local_processes(cfg.get("trainer")))
    # Lightning warns (with a code snippet) that a manually optimised model's checkpoints hold the weights
    # after the step: that is what a resumed run needs, and every model steps that way.
    warnings.filterwarnings("ignore", message=".*Using ModelCheckpoint with manual optimization.*")
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    out_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg, out_dir)  # before anything is written to out_dir
    if init_model is None and ckpt_path is None:
        init_model = weights_initialiser(cfg)  # init.ckpt: loaded and checked before anything is written
    # the objects validate their own settings, and the samplers are checked against the model: before any file
    datamodule, model = build_run(cfg)
    if init_model is not None and ckpt_path is None:
        init_model(model)
    # DDP ranks started by re-running the command share the folder: rank 0 writes the run's files
    accept_output_dir(out_dir, write_hydra_files=rank_zero_only.rank == 0)
    if rank_zero_only.rank == 0:
        write_resolved_config(cfg, out_dir)
    loggers = build_loggers(cfg)
    trainer = build_trainer(cfg, build_callbacks(cfg, has_logger=bool(loggers)), loggers, model)

    metrics = fit(trainer, model, datamodule, ckpt_path, out_dir)
    if not trainer.is_global_zero:
        return metrics
    return finish(trainer, model, datamodule, cfg, out_dir, metrics)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@user_errors
def main(cfg: DictConfig):
    return optimized_value(cfg, train(cfg))


if __name__ == "__main__":
    main()
