"""``siddm-distill`` / ``python -m siddm_lab.distill``: distil a DDPM/DDIM checkpoint into a few-step student.

The teacher's checkpoint gives the student its network, process, parameterisation and data; ``distill=``
chooses progressive distillation (``progressive``: halvings, a checkpoint and an evaluation per round) or
one-step knowledge distillation (``knowledge``). The run is a ``siddm-train`` run of the student: same
folder layout, resume (``ckpt_path=last``), loggers and final evaluation (the last student's plan). The
student's run is built by ``siddm_lab.distillation``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from siddm_lab.cli.train import train
from siddm_lab.config import CONF_DIR
from siddm_lab.distillation import student_run
from siddm_lab.utils.entry import optimized_value, user_errors


def distill(cfg: DictConfig) -> dict:
    run, init_model = student_run(cfg)
    return train(run, init_model=init_model)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="distill")
@user_errors
def main(cfg: DictConfig):
    return optimized_value(cfg, distill(cfg))


if __name__ == "__main__":
    main()
