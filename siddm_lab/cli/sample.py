"""``siddm-sample`` / ``python -m siddm_lab.sample``: sample a trained checkpoint.

One checkpoint, any sampler: ``sampler=ddim|ddpm``, ``sampler.steps`` (S), ``sampler.eta``,
``subsequence=...``, ``seed``. Writes ``samples.npz``, ``samples.png``, ``metrics.json`` (the
dataset's metrics, NFE, wall time, settings) and ``config.yaml`` into the run folder; a Hydra
multirun (``-m``) over sampler settings gives one folder per setting. ``mode=``: ``sample``,
``interpolate``, ``reconstruct``, ``invert``. The work is done by ``siddm_lab.sampling``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from siddm_lab.config import CONF_DIR
from siddm_lab.sampling import sample_checkpoint
from siddm_lab.utils.entry import user_errors


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sample")
@user_errors
def main(cfg: DictConfig):
    return sample_checkpoint(cfg)


if __name__ == "__main__":
    main()
