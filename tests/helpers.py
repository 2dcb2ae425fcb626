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
