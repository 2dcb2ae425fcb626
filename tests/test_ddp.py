"""2-process DDP on CPU (gloo): DDPM and SIDDM train with the right data sharding, periodic
evaluation gathers every rank's samples once, only rank 0 writes; a multirun with DDP gives one
output folder per job. Slow: each run starts two Python processes."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

TINY = [
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "dataset.n_train=2048",
    "dataset.n_val=256",
    "dataset.n_eval=500",
    "dataset.batch_size=128",
    "net.hidden=32",
    "callbacks.evaluation.num_samples=100",
    "eval.num_samples=200",
]


def _cli(*args, timeout=600):
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "siddm_lab.train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("model,extra", [
    ("ddpm", ["diffusion.steps=50"]),
    ("siddm", ["net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4", "discriminator.hidden=32"]),
])
def test_two_process_ddp_trains_and_shards_data(tmp_path, model, extra):
    # max_steps counts iterations for both models (SIDDM's D step is not counted): one batch each
    batches = 16  # 2048 points / (128 per rank x 2 ranks) = 8 batches per rank per epoch -> 2 epochs
    r = _cli(f"model={model}", *TINY, *extra, "trainer=ddp_cpu", f"trainer.max_steps={batches}",
             "trainer.val_check_interval=8", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["global_step"] == batches
    assert "val/fd_2d" in metrics  # periodic evaluation ran on the gathered samples
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    # each rank saw half of the data per epoch (DistributedSampler): 16 batches = 2 epochs, not 1
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == batches
    assert "siddm_config" in ckpt
    # rank 0 alone wrote the periodic plots (one per validation) and the final samples
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == \
        ["step_0000008.png", "step_0000016.png"]
    assert (tmp_path / "samples.npz").is_file()


def test_ddp_inside_a_multirun_gives_one_folder_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    r = _cli("-m", *TINY, "diffusion.steps=50", "trainer=ddp_cpu", "trainer.max_steps=8",
             "trainer.val_check_interval=8", "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "start_method=spawn" in r.stderr + r.stdout  # the local sweep runs its ranks spawned
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_seed=0,trainer=ddp_cpu", "1_seed=1,trainer=ddp_cpu"] or len(jobs) == 2, jobs
    for job in jobs:
        m = json.loads((sweep / job / "metrics.json").read_text())
        assert m["global_step"] == 8
    # the sweep ran once: no second sweep folder, no stray run folders in the repo
    assert len(list(tmp_path.iterdir())) == 1


def test_ddp_rank_failure_fails_the_job(tmp_path):
    """A rank that raises (here: NaN loss at the first step) ends the run with a non-zero status and
    the error, instead of leaving the other rank waiting."""
    r = _cli("model=ddpm", *TINY, "diffusion.steps=50", "trainer=ddp_cpu", "trainer.max_steps=8",
             "model.optimizer.lr=1e30", "trainer.val_check_interval=8", f"hydra.run.dir={tmp_path}", timeout=300)
    assert r.returncode != 0
    assert "is nan" in (r.stderr + r.stdout).lower() or "non-finite" in (r.stderr + r.stdout).lower()


def _cli_bounded(*args, timeout: int):
    """The CLI in its own process group; a run still going after ``timeout`` seconds (a rank left
    waiting in a collective) has the whole group killed and fails the test instead of hanging it."""
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "siddm_lab.train", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the run was still going after {timeout} s (killed): {(out + err)[-3000:]}")
    # a rank orphaned by its launcher would keep the pipes open; communicate() returned, so none is left
    return proc.returncode, out + err


@pytest.mark.parametrize("trainer,rank", [("ddp_cpu", 1), ("ddp_cpu", 0), ("ddp_spawn_cpu", 1)])
def test_one_failing_rank_ends_the_job_with_its_error(tmp_path, trainer, rank):
    """One rank raises alone at step 25 while the other waits for it in the gradient all-reduce: the
    job exits non-zero with that rank's error, writes no on-exception checkpoint (a checkpoint is
    saved by all ranks together, which the waiting rank cannot join) and keeps last.ckpt."""
    rc, out = _cli_bounded("model=ddpm", *TINY, "diffusion.steps=50", f"trainer={trainer}", "trainer.max_steps=40",
                           "trainer.val_check_interval=20", "callbacks.evaluation.num_samples=0",
                           "+callbacks.fail._target_=tests.helpers.FailAt", "+callbacks.fail.step=25",
                           f"+callbacks.fail.rank={rank}", f"hydra.run.dir={tmp_path}", timeout=120)
    assert rc != 0, out[-3000:]
    assert f"injected failure on rank {rank} at step 25" in out, out[-3000:]
    assert "no on_exception.ckpt" in out, out[-3000:]
    assert not (tmp_path / "checkpoints" / "on_exception.ckpt").exists()
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 20
    assert not (tmp_path / "metrics.json").exists()


def test_submitit_local_launcher_runs_each_job_in_its_own_process(tmp_path):
    """hydra/launcher=local (submitit_local): the cluster launcher's code path on one machine."""
    sweep = tmp_path / "sweep"
    r = _cli("-m", "hydra/launcher=local", *TINY, "diffusion.steps=50", "trainer.max_steps=6",
             "trainer.val_check_interval=6", "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 2
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["global_step"] == 6
    assert (sweep / ".submitit").is_dir()  # submitit's job folders (logs, pickled jobs)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def _group_alive(pgid: int, wait: float = 0.0) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies, which a container's init may leave
    unreaped, do not count), waiting up to ``wait`` seconds for the group to end."""
    import time

    def running() -> bool:
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = open(stat).read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
        return False

    deadline = time.monotonic() + wait
    while running():
        if time.monotonic() > deadline:
            return True
        time.sleep(0.2)
    return False


def _signal_ddp_run(out_dir, *, moment: str, delay: float, to: str, max_seconds: int = 90):
    """A 2-process toy DDP run stopped by SIGTERM sent to rank 0, rank 1 or both, ``delay`` seconds after
    ``moment`` ("training": the first iteration; "start-up": rank 0 has started rank 1). Returns the
    exit status and the output; fails the test if the job outlives the signal by ``max_seconds``."""
    import time

    args = ["model=ddpm", *TINY, "callbacks.evaluation.num_samples=0", "diffusion.steps=50", "trainer=ddp_cpu",
            "trainer.max_steps=20000", "trainer.val_check_interval=1000", f"hydra.run.dir={out_dir}"]
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "siddm_lab.train", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        log = out_dir / "train.log"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if moment == "training" and log.is_file() and "training started" in log.read_text():
                break
            if moment == "start-up" and _children(proc.pid):
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before the signal"
        time.sleep(delay)
        ranks = {"rank0": [proc.pid], "rank1": _children(proc.pid)[:1],
                 "both": [proc.pid, *_children(proc.pid)[:1]]}[to]
        assert len(ranks) == (2 if to == "both" else 1), ranks
        for pid in ranks:
            os.kill(pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=max_seconds)  # returns once every rank has closed the pipe
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            pytest.fail(f"the job was still running {max_seconds} s after SIGTERM to {to}: {out[-3000:]}")
        assert not _group_alive(proc.pid, wait=10), "a rank outlived the job"
        return proc.returncode, out
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("to,delay", [("rank0", 1.0), ("rank0", 2.5), ("rank0", 6.0), ("both", 1.5),
                                      ("both", 4.0), ("rank1", 1.0)])
def test_sigterm_stops_every_ddp_rank_with_a_checkpoint(tmp_path, to, delay):
    """SIGTERM to rank 0 alone (``kill``), to both ranks (what SLURM sends before pre-emption) or to rank 1,
    at several moments of training: every rank stops before the same iteration, on_exception.ckpt is
    written, and the job exits with 143 (it hung in a collective started inside Lightning's signal
    handler, depending on the moment). Each delay is long enough for the first iteration to complete."""
    rc, out = _signal_ddp_run(tmp_path, moment="training", delay=delay, to=to)
    assert rc == 143, out[-3000:]
    assert "stopped by a termination signal at step" in out and "ckpt_path=last" in out, out[-3000:]
    assert out.count("stopped by a termination signal") == 1, out[-3000:]  # one message, from rank 0
    ckpt = torch.load(tmp_path / "checkpoints" / "on_exception.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] > 0
    assert f"at step {ckpt['global_step']};" in out
    assert "Traceback" not in out and "weights_only` was not set" not in out, out[-3000:]
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("to", ["rank0", "both"])
def test_sigterm_as_ddp_training_starts_ends_the_job_with_what_it_has(tmp_path, to):
    """SIGTERM the moment training starts, when the first iteration may or may not have completed: the job
    ends with 143 either way, with one message from rank 0, and what it says matches what is on disk:
    on_exception.ckpt and ``ckpt_path=last`` after a completed iteration, "nothing to resume from" and no
    checkpoint before one (the run never claims a checkpoint it did not write, nor loses one it did)."""
    rc, out = _signal_ddp_run(tmp_path, moment="training", delay=0.0, to=to)
    assert rc == 143, out[-3000:]
    assert out.count("stopped by a termination signal") == 1, out[-3000:]
    assert "Traceback" not in out and "weights_only` was not set" not in out, out[-3000:]
    assert not (tmp_path / "metrics.json").exists()
    ckpt_file = tmp_path / "checkpoints" / "on_exception.ckpt"
    if ckpt_file.exists():
        step = torch.load(ckpt_file, weights_only=True, map_location="cpu")["global_step"]
        assert step > 0 and f"at step {step};" in out and "ckpt_path=last" in out, out[-3000:]
        assert "nothing to resume from" not in out, out[-3000:]
    else:
        assert "stopped by a termination signal at step 0, before this run completed a training iteration" in out
        assert "nothing to resume from" in out and "ckpt_path=last" not in out, out[-3000:]


def test_sigterm_during_ddp_start_up_ends_the_job(tmp_path):
    """SIGTERM to rank 0 while it starts rank 1: the job ends with 143 before any iteration, saying that
    there is nothing to resume from."""
    rc, out = _signal_ddp_run(tmp_path, moment="start-up", delay=0.5, to="rank0")
    assert rc == 143, out[-3000:]
    assert "before this run completed a training iteration" in out, out[-3000:]
    assert "nothing to resume from" in out, out[-3000:]
    assert not (tmp_path / "checkpoints" / "on_exception.ckpt").exists()


def test_a_ddp_run_stopped_by_sigterm_resumes_with_ckpt_path_last(tmp_path):
    rc, out = _signal_ddp_run(tmp_path, moment="training", delay=1.0, to="both")
    assert rc == 143, out[-3000:]
    step = torch.load(tmp_path / "checkpoints" / "on_exception.ckpt", weights_only=True,
                      map_location="cpu")["global_step"]
    rc, out = _cli_bounded("model=ddpm", *TINY,
    "callbacks.evaluation.num_samples=0", "diffusion.steps=50", "trainer=ddp_cpu",
                           f"trainer.max_steps={step + 8}", "trainer.val_check_interval=1000", "ckpt_path=last",
                           f"hydra.run.dir={tmp_path}", timeout=300)
    assert rc == 0, out[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["global_step"] == step + 8
