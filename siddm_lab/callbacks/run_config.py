"""The run's resolved config in every checkpoint (``siddm_config``), so that a checkpoint alone rebuilds its
model (``siddm_lab.models.loading``). Added by the training entry, not a config option."""

from __future__ import annotations

import lightning as L


class RunConfig(L.Callback):
    """Args: ``config``: the resolved run config as plain containers (``OmegaConf.to_container``)."""

    def __init__(self, config: dict):
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["siddm_config"] = self.config
