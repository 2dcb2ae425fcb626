"""``threads``: a run's torch CPU threads (auto = the CPUs of the affinity mask, shared among CPU DDP
processes), checked when the config is composed."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from siddm_lab.config import validate
from siddm_lab.errors import ConfigError
from siddm_lab.utils import threads as th
from tests.helpers import compose_cfg


def test_auto_is_the_affinity_share_of_each_local_process(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(th, "available_cpus", lambda: 8)
    assert th.resolve_threads("auto") == 8
    assert th.resolve_threads("auto", local_processes=2) == 4
    assert th.resolve_threads("auto", local_processes=3) == 2
    assert th.resolve_threads("auto", local_processes=16) == 1  # never 0
    assert th.resolve_threads(3, local_processes=2) == 3  # an explicit count is taken as given


def test_auto_takes_omp_num_threads_from_the_environment(monkeypatch):
    """SLURM scripts and the parallel launcher's workers (joblib) set OMP_NUM_THREADS to each job's share."""
    monkeypatch.setattr(th, "available_cpus", lambda: 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert th.resolve_threads("auto") == 3 and th.resolve_threads(2) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert th.resolve_threads("auto") == 8


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "two"])
def test_bad_threads_are_refused_by_name(bad):
    with pytest.raises(ConfigError, match="threads="):
        th.resolve_threads(bad)
    cfg = compose_cfg([])
    cfg.threads = bad
    with pytest.raises(ConfigError, match="threads"):
        validate(cfg)


def test_local_processes_of_a_cpu_ddp_trainer():
    cfg = compose_cfg(["trainer=ddp_cpu"])
    assert th.local_processes(cfg.trainer) == int(cfg.trainer.devices) >= 2
    assert th.local_processes(compose_cfg([]).trainer) == 1
    assert th.local_processes(OmegaConf.create({"accelerator": "gpu", "devices": 4})) == 1


def test_apply_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        assert th.apply_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("config", ["train", "sample", "distill"])
def test_every_entry_point_has_the_setting(config):
    from siddm_lab.config import compose

    overrides = {"train": [], "sample": ["ckpt=x.ckpt"], "distill": ["teacher=x.ckpt"]}[config]
    assert compose(overrides, config).threads == "auto"


@pytest.mark.slow
def test_parallel_launcher_gives_each_job_its_share_of_the_cores(tmp_path):
    """hydra/launcher=parallel (joblib, 2 jobs): each job runs with cores // 2 threads, not all cores."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "siddm_lab.train", "-m", "hydra/launcher=parallel", "seed=0,1",
           "trainer.max_steps=5", "dataset.n_train=512", "dataset.batch_size=128", "net.hidden=16",
           "callbacks.evaluation.num_samples=0", "eval.num_samples=50", "eval.batch_size=50", "diffusion.steps=20",
           "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp_path}"]
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_NUM_THREADS"}
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=600)
    logs = [p.read_text() for p in tmp_path.glob("*/*.log")]
    share = max(1, th.available_cpus() // 2)
    assert len(logs) == 2 and all(f"torch CPU threads: {share} (threads=auto: OMP_NUM_THREADS)" in t for t in logs)
