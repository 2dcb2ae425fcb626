"""Compose the real configs and run the train task in-process."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from tests.conftest import CONF_DIR

FAST = [
    "trainer.enable_progress_bar=false",
    "logger=csv",
]


def compose_cfg(overrides: list[str], output_dir: Path | None = None, return_hydra_config: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=overrides, return_hydra_config=return_hydra_config)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def run_train(overrides: list[str], output_dir: Path):
    from siddm_lab.cli.train import train

    cfg = compose_cfg(FAST + overrides, output_dir)
    return train(cfg), cfg


def use_float64_schedule(scheduler, diffusion):
    """Give a diffusers scheduler our float64 schedule (for float64 parity checks)."""
    import torch

    scheduler.betas = diffusion.betas.clone()
    scheduler.alphas = diffusion.alphas.clone()
    scheduler.alphas_cumprod = diffusion.alphas_cumprod.clone()
    one = torch.tensor(1.0, dtype=torch.float64)
    scheduler.final_alpha_cumprod = one  # DDIMScheduler
    scheduler.one = one  # DDPMScheduler
    return scheduler


def eps_predictor(diffusion, model, clip_x0: float | None = None):
    """``predict(x_t, t) -> (x0', ε')`` for an ε-predicting ``model``, as the models build it."""

    def predict(x, t):
        return diffusion.to_x0_eps("eps", x, t, model(x, t), clip_x0=clip_x0)

    return predict
