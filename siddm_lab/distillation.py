"""Distillation runs, the library side of ``siddm-distill``: the student's run config from a composed
``distill`` config and its teacher's checkpoint. The run itself is a ``siddm-train`` run of the student."""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from siddm_lab.config import validate
from siddm_lab.errors import ConfigError
from siddm_lab.models.distill import ProgressiveDistillation
from siddm_lab.models.loading import load_model


def student_config(cfg: DictConfig, teacher_cfg: DictConfig) -> DictConfig:
    """The student's run config: this config with the teacher's net, process and data in ``model``,
    ``diffusion`` and ``dataset``, and the final student's sampler."""
    tm = teacher_cfg.model
    run = OmegaConf.to_container(cfg, resolve=False)  # interpolations (paths, periods) resolve in the run
    teacher_sampler = teacher_cfg.get("sampler") or {}
    model = {**run.pop("distill"), "net": OmegaConf.to_container(tm.net),
             "diffusion": OmegaConf.to_container(tm.diffusion), "teacher_prediction_type": tm.prediction_type,
             "clip_x0": teacher_sampler.get("clip_x0")}
    dataset = OmegaConf.to_container(teacher_cfg.dataset)
    run.pop("train_batch_size"), run.pop("data_dir")  # applied to the dataset
    if cfg.data_dir is not None and "reader" in dataset and "root" in dataset["reader"]:
        dataset["reader"]["root"] = str(cfg.data_dir)
    if cfg.train_batch_size is not None:
        dataset["batch_size"] = int(cfg.train_batch_size)
    run.update(model=model, dataset=dataset, diffusion=OmegaConf.to_container(teacher_cfg.get("diffusion") or {}))
    if model["_target_"].endswith("ProgressiveDistillation"):
        run["trainer"]["max_steps"] = int(model["rounds"]) * int(model["steps_per_round"])
        run["trainer"]["val_check_interval"] = int(model["steps_per_round"])
    return OmegaConf.create(run)


@contextmanager
def distill_keys(cfg: DictConfig):
    """Build the student in this block: its model names its arguments as a run's (``model.prediction_type``),
    which the user sets as ``distill.*``: a ConfigError (also inside Hydra's InstantiationException) about
    one of them names the ``distill`` key."""
    try:
        yield
    except (ConfigError, InstantiationException) as e:
        cause = e
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__
        m = re.match(r"model\.(\w+)\b", str(cause)) if cause is not None else None
        if m is None or m.group(1) not in cfg.distill:
            raise
        raise ConfigError(f"distill.{str(cause)[len('model.'):]}") from e


def student_run(cfg: DictConfig):
    """``(run, init_model)``: the student's run config (``student_config``, with the teacher's training step
    and the final student's sampler) and the function that copies the teacher's net into a fresh student,
    for ``train(run, init_model=init_model)``. The teacher is loaded and checked first."""
    validate(cfg)  # the distillation's own keys (distill.*), named as the user sets them
    # the frozen teacher stays in eval mode (Lightning warns about any module in eval mode at the start)
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
    teacher, teacher_cfg = load_model(cfg.teacher, cfg.weights)
    if type(teacher).__name__ not in ("DDPM", "DDIM", "ProgressiveDistillation"):
        raise ConfigError(f"teacher={cfg.teacher} is a {type(teacher).__name__} checkpoint; distillation needs a "
                          f"DDPM/DDIM denoiser (a diffusion GAN's generator chain is stochastic)")
    run = student_config(cfg, teacher_cfg)
    run.teacher_train_step = teacher.global_step_at_save  # recorded in the run's config.yaml
    with distill_keys(cfg):
        student = hydra.utils.instantiate(run.model)  # the final student's plan, before anything is written
    if isinstance(student, ProgressiveDistillation):
        plan = student.student_plan(student.rounds - 1)
    else:
        plan = student.student_plan()
    run.sampler = {"_target_": "siddm_lab.diffusion.DDIMSampler", "_partial_": True, "eta": 0.0, "steps": None,
                   "subsequence": {"name": "explicit", "timesteps": plan}, "clip_x0": run.model.clip_x0}
    return run, lambda model: model.init_from_teacher(teacher.net)
