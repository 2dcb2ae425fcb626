"""Exact resume: a run stopped at step N and resumed with ckpt_path=last ends with the same
weights (raw and EMA), optimizer and GAN state, samples and metrics at step M as a run that was
never stopped. Also: SIGTERM / SIGUSR1 save a checkpoint before the process exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.conftest import ROOT
from tests.helpers import run_train

BASE = [
    "dataset.n_train=1024",  # 8 batches of 128 per epoch
    "dataset.n_val=128",
    "dataset.n_eval=300",
    "dataset.batch_size=128",
    "net.hidden=32",
    "callbacks.evaluation.num_samples=64",
    "eval.num_samples=300",
    "trainer.val_check_interval=4",
    "logger=csv",
]
MODELS = {
    "ddpm": ["diffusion.steps=50"],
    "siddm": ["model=siddm", "net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4", "discriminator.hidden=32",
              "model.objective.r1_gamma=0.05", "model.objective.lazy_reg=2"],
}
MODELS["siddm_ensemble"] = MODELS["siddm"] + ["seeds=[0,1]"]


def _ckpt(out):
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")


def _same_tree(a, b, path="") -> list[str]:
    """Paths where two checkpoint trees differ (tensors compared exactly)."""
    if isinstance(a, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a for d in _same_tree(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _same_tree(x, y, f"{path}/{i}")]
    if isinstance(a, torch.Tensor):
        return [] if torch.equal(a, b) else [path]
    return [] if a == b or path.endswith(("_time", "seconds")) else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.parametrize("model,stop,end", [("ddpm", 12, 20), ("ddpm", 16, 20), ("siddm", 10, 18),
                                            ("siddm_ensemble", 10, 18)])  # 18: last.ckpt written at the end
def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path, model, stop, end):
    """stop=12 / 10 is mid-epoch, stop=16 an epoch boundary (8 batches per epoch; a GAN step is one
    iteration). The ensemble also resumes its members' noise generators and stacked batches."""
    overrides = BASE + MODELS[model]
    full, _ = run_train(overrides + [f"trainer.max_steps={end}"], tmp_path / "full")
    run_train(overrides + [f"trainer.max_steps={stop}"], tmp_path / "split")
    resumed, _ = run_train(overrides + [f"trainer.max_steps={end}", "ckpt_path=last"], tmp_path / "split")
    a, b = _ckpt(tmp_path / "full"), _ckpt(tmp_path / "split")
    assert a["global_step"] == b["global_step"] == end
    # weights (EMA and raw), both optimizers' states and the schedulers; Lightning's loop counters are
    # left out (after a resume at an epoch boundary it counts that epoch twice in its totals)
    for key in ("state_dict", "current_model_state", "optimizer_states", "lr_schedulers"):
        if key in a:
            diff = _same_tree(a[key], b[key], key)
            assert not diff, diff[:5]
    member = "seed_1" if model == "siddm_ensemble" else ""
    sa = np.load(tmp_path / "full" / member / "samples.npz")["samples"]
    sb = np.load(tmp_path / "split" / member / "samples.npz")["samples"]
    assert np.array_equal(sa, sb)
    for k in ("fd_2d", "modes_covered", "val/fd_2d", "train/loss_d" if model.startswith("siddm") else "train/loss"):
        assert full[k] == resumed[k], k


def _cli_proc(args, env_extra=None):
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "siddm_lab.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_saves_a_checkpoint_and_the_run_resumes(tmp_path, sig):
    args = ["trainer.enable_progress_bar=false", *BASE, "diffusion.steps=50", "trainer.max_steps=100000",
            "trainer.val_check_interval=1000", "callbacks.evaluation.num_samples=0", f"hydra.run.dir={tmp_path}"]
    proc = _cli_proc(args)
    log = tmp_path / "train.log"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # wait until training runs
        if log.is_file() and "training started" in log.read_text():
            break
        time.sleep(0.5)
    time.sleep(3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err[-2000:])
    assert "stopped by a termination signal" in out + err and "ckpt_path=last" in out + err
    ckpt = torch.load(tmp_path / "checkpoints" / "on_exception.ckpt", weights_only=True, map_location="cpu")
    step = ckpt["global_step"]
    assert step > 0
    assert not (tmp_path / "metrics.json").exists()  # an interrupted run is not reported as finished
    # resume to a few steps further
    r = subprocess.run([sys.executable, "-m", "siddm_lab.train", *args[:-4], f"trainer.max_steps={step + 8}",
                        "trainer.val_check_interval=4", "callbacks.evaluation.num_samples=0", "ckpt_path=last",
                        f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, WANDB_MODE="offline"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["global_step"] == step + 8


class _Payload:
    """Stands for an arbitrary object pickled into a checkpoint."""


@pytest.mark.parametrize("how", ["file", "last"])
def test_resuming_from_a_checkpoint_with_pickled_objects_is_refused(tmp_path, how):
    from siddm_lab.errors import CheckpointError

    bad = tmp_path / "checkpoints" / "last.ckpt"
    bad.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "payload": _Payload()}, bad)
    ckpt = str(bad) if how == "file" else "last"
    with pytest.raises(CheckpointError, match="refusing to load"):
        run_train(BASE + MODELS["ddpm"] + ["trainer.max_steps=4", f"ckpt_path={ckpt}"], tmp_path)


SMALL = BASE + ["diffusion.steps=50", "trainer.max_steps=4", "callbacks.evaluation.num_samples=0"]


def _files(folder) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("left", ["checkpoints and metrics", "checkpoints", "metrics"])
def test_a_fresh_run_into_an_earlier_runs_folder_is_refused_and_touches_nothing(tmp_path, left):
    """Without ckpt_path a run is fresh: in a folder holding an earlier run's checkpoints or metrics
    it would resume from them (whatever its T) and overwrite the results."""
    from siddm_lab.errors import CheckpointError

    run_train(SMALL, tmp_path)
    if left == "checkpoints":
        (tmp_path / "metrics.json").unlink()
    elif left == "metrics":
        for p in (tmp_path / "checkpoints").iterdir():
            p.unlink()
    before = _files(tmp_path)
    with pytest.raises(CheckpointError) as e:
        run_train(SMALL + ["diffusion.steps=10"], tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "ckpt_path=last" in msg and "hydra.run.dir" in msg, msg
    assert _files(tmp_path) == before


@pytest.mark.parametrize("change,expected", [
    ("diffusion.steps=10", ["diffusion.steps: checkpoint 50, now 10"]),
    ("net.hidden=16", ["model.net.hidden: checkpoint 32, now 16"]),
    ("model.optimizer.lr=0.01", ["model.optimizer.lr: checkpoint 0.0002, now 0.01"]),
])
def test_a_resume_that_changes_the_model_or_process_is_refused(tmp_path, change, expected):
    """Resuming with another T, net or optimiser is refused before training, naming the keys and
    both values (a changed net was a size-mismatch traceback, another T a silent resume); the
    folder keeps its checkpoints and gets no step-0 on_exception.ckpt."""
    from siddm_lab.errors import CheckpointError

    run_train(SMALL, tmp_path)
    before = _files(tmp_path)
    with pytest.raises(CheckpointError) as e:
        run_train(SMALL + ["trainer.max_steps=8", change, "ckpt_path=last"], tmp_path)
    msg = str(e.value)
    assert "cannot resume" in msg and "last.ckpt" in msg, msg
    for text in expected:
        assert text in msg, msg
    assert _files(tmp_path) == before


def _csv_rows(folder):
    import csv

    with open(folder / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_resume_may_train_longer_and_change_evaluation_and_logging(tmp_path):
    run_train(SMALL, tmp_path)
    before = _csv_rows(tmp_path)
    metrics, _ = run_train(SMALL + ["trainer.max_steps=8",
                                    "callbacks.evaluation.num_samples=32", "model.log_every_n_steps=2",
                                    "eval.num_samples=100", "ckpt_path=last"], tmp_path)
    assert metrics["global_step"] == 8
    # the resumed run appends to metrics.csv: the first run's rows are still there, values unchanged
    after = _csv_rows(tmp_path)
    assert before and [{k: r.get(k, "") for k in before[0]} for r in after[:len(before)]] == before
    assert max(int(r["step"]) for r in after) > max(int(r["step"]) for r in before)


def test_an_exception_before_the_first_iteration_writes_no_checkpoint(tmp_path):
    """A run that fails before completing an iteration has nothing to resume from: an on-exception
    checkpoint of the untrained net would be what a later ckpt_path=last resumes from."""
    fail = ["+callbacks.fail._target_=tests.helpers.FailAt"]
    with pytest.raises(RuntimeError, match="injected failure on rank 0 at step 0"):
        run_train(SMALL + fail + ["+callbacks.fail.step=0"], tmp_path / "at0")
    assert not list((tmp_path / "at0").rglob("*.ckpt"))
    # after an iteration a crash still keeps the state it reached
    with pytest.raises(RuntimeError, match="injected failure on rank 0 at step 3"):
        run_train(SMALL + fail + ["+callbacks.fail.step=3"], tmp_path / "at3")
    ckpt = torch.load(tmp_path / "at3" / "checkpoints" / "on_exception.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 3


def test_a_checkpoint_from_before_the_noise_group_resumes_under_gaussian_noise_only():
    """Checkpoints written before ``noise`` existed trained with Gaussian noise: resuming them under
    noise=gaussian is no change, under noise=gamma it is one."""
    from siddm_lab.resume import config_changes

    old = {"model": {"diffusion": {"name": "linear", "T": 10}}, "diffusion": {"steps": 10}}
    now = {"model": {"diffusion": {"name": "linear", "T": 10, "noise": {"name": "gaussian"}}},
           "diffusion": {"steps": 10}}
    assert config_changes(old, now) == []
    gamma = {"model": {"diffusion": {"name": "linear", "T": 10, "noise": {"name": "gamma", "theta0": 0.1}}},
             "diffusion": {"steps": 10}}
    changes = config_changes(old, gamma)
    assert any("noise.name: checkpoint 'gaussian', now 'gamma'" in c for c in changes)
    assert any("noise.theta0: checkpoint '(absent)', now 0.1" in c for c in changes)
