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


@pytest.fixture
def unanswering_server():
    """A W&B server address that accepts connections and never answers (a node without internet, where
    connections hang, behaves the same for W&B)."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


@pytest.mark.slow
def test_wandb_with_a_key_and_no_network_times_out_and_logs_offline(tmp_path, unanswering_server):
    """logger=wandb with an API key but no answer from W&B: the run waited at "setting up run" with no
    message. It now gives up after W&B's init timeout, says so, and logs offline; the hint names the
    offline run's folder."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    env.update(WANDB_API_KEY="a" * 40, WANDB_BASE_URL=unanswering_server, WANDB_INIT_TIMEOUT="3",
               HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "siddm_lab.train", "logger=wandb", "trainer.enable_progress_bar=false",
                        *TINY_TOY, "trainer.max_steps=4", "trainer.val_check_interval=4",
                        f"hydra.run.dir={tmp_path / 'run'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "W&B did not answer within 3 s (its init timeout" in out and "Logging offline instead" in out, out[-3000:]
    (run_dir,) = _offline_runs(tmp_path / "run")
    assert f"upload it with `wandb sync {run_dir}`" in out, out[-3000:]
    assert read_wandb_offline_run(run_dir)["run"]["job_type"] == "train"
    assert (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.slow
def test_offline_hint_names_the_runs_folder(tmp_path):
    """Without credentials the run logs offline; the `wandb sync` hint names that run's folder (it named the
    job folder, which `wandb sync` does not take)."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    env.update(OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "siddm_lab.train", "logger=wandb", "trainer.enable_progress_bar=false",
                        *TINY_TOY, "trainer.max_steps=2", "trainer.val_check_interval=2",
                        f"hydra.run.dir={tmp_path / 'run'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    (run_dir,) = _offline_runs(tmp_path / "run")
    assert f"wandb sync {run_dir}`" in out and "no W&B credentials found" in out, out[-3000:]
