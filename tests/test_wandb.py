"""W&B offline: what each job records (name, group, job_type, tags, config, losses, metrics, images),
read back from the offline run files. No account or network needed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.helpers import read_wandb_offline_run
from tests.test_collect import _job
from tests.test_sample import run_sample, toy_ckpt  # noqa: F401  (fixture)
from tests.test_train import TINY_TOY


def _offline_runs(root):
    return sorted(root.rglob("offline-run-*"))


def test_train_run_records_identity_config_losses_metrics_and_plots(tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", WANDB_PROJECT="siddm_tests")
    r = subprocess.run([sys.executable, "-m", "siddm_lab.train", "logger=wandb", "trainer.enable_progress_bar=false",
                        *TINY_TOY, "model.log_every_n_steps=1", "trainer.log_every_n_steps=5",
                        f"hydra.run.dir={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    (run_dir,) = _offline_runs(tmp_path)
    rec = read_wandb_offline_run(run_dir)
    run = rec["run"]
    assert run["project"] == "siddm_tests" and run["group"] == "train" and run["job_type"] == "train"
    # the name is the job's overrides; each override is a tag (location keys left out)
    assert run["name"].startswith("logger=wandb,trainer.max_steps=20,") and len(run["name"]) <= 128
    assert "hydra.run.dir" not in run["name"] and "trainer.enable_progress_bar" not in run["name"]
    assert {"train", "diffusion.steps=50", "trainer.max_steps=20"} <= set(run["tags"])
    assert {"model", "dataset", "schedule", "trainer", "seed"} <= rec["config"]
    assert {"train/loss", "val/fd_2d", "val/modes_covered", "final/fd_2d", "final/sample_seconds"} <= rec["history"]
    assert any("/val/samples" in m for m in rec["media"]) and any("/final/samples" in m for m in rec["media"])


def test_sample_job_is_logged_with_job_type_sample(toy_ckpt, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_sample([f"ckpt={toy_ckpt}", "sampler=ddim", "sampler.steps=5", "num_samples=200", "wandb=true",
                "task_name=ddim_table"], tmp_path / "out")
    (run_dir,) = _offline_runs(tmp_path)
    rec = read_wandb_offline_run(run_dir)
    assert rec["run"]["job_type"] == "sample" and rec["run"]["group"] == "ddim_table"
    assert {"nfe", "fd_2d", "sample_seconds"} <= rec["history"]
    assert {"sampler", "ckpt", "checkpoint"} <= rec["config"]
    assert rec["media"]  # the scatter plot


def test_collect_logs_table_and_plots(tmp_path, monkeypatch):
    sweep = tmp_path / "ddim_table1" / "2026-01-01_00-00-00"
    _job(sweep, "0", ["sampler.steps=10", "seed=0"], {"nfe": 10, "fd": 3.0})
    _job(sweep, "1", ["sampler.steps=50", "seed=0"], {"nfe": 50, "fd": 1.0})
    from siddm_lab.cli.collect import main

    assert main([str(sweep), "--rows", "sampler.steps", "--metric", "fd", "--wandb"]) == 0
    (run_dir,) = _offline_runs(sweep)
    rec = read_wandb_offline_run(run_dir)
    assert rec["run"]["job_type"] == "collect" and rec["run"]["group"] == "ddim_table1"
    assert {"jobs", "collect/results/_type", "collect/fd_vs_nfe/_type"} <= rec["history"]  # a table, an image


@pytest.fixture(autouse=True)
def _no_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
