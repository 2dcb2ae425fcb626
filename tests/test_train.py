"""End-to-end runs of the train task: outputs, fast_dev_run, resume, NaN guard, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from siddm_lab.errors import NonFiniteLossError
from tests.conftest import ROOT
from tests.helpers import FAST, run_train

TINY_TOY = [
    "trainer.max_steps=20",
    "trainer.val_check_interval=10",
    "dataset.n_train=2048",
    "dataset.n_val=256",
    "dataset.n_eval=500",
    "dataset.batch_size=128",
    "diffusion.steps=50",
    "net.hidden=32",
    "callbacks.evaluation.num_samples=100",
    "eval.num_samples=200",
]


def test_toy_run_writes_all_outputs(tmp_path):
    metrics, cfg = run_train(TINY_TOY, tmp_path)
    for name in ("config.yaml", "metrics.json", "samples.npz", "samples.png", "checkpoints/last.ckpt"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("modes_covered", "hq_ratio", "mode_kl", "fd_2d", "mmd_poly2", "mmd_rbf", "nfe",
                "sample_seconds", "train_seconds", "global_step", "val/loss"):
        assert key in saved, key
    assert saved["global_step"] == 20
    assert saved["nfe"] == 50
    samples = np.load(tmp_path / "samples.npz")["samples"]
    assert samples.shape == (200, 2) and np.isfinite(samples).all()
    # periodic evaluation wrote its scatter plots
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == ["step_0000010.png", "step_0000020.png"]
    # the CSV logger recorded the sample metrics of the validation
    csv = (tmp_path / "csv" / "metrics.csv").read_text()
    assert "val/modes_covered" in csv and "val/loss" in csv and "final/fd_2d" in csv
    # the checkpoint loads safely and carries the config
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["siddm_config"]["diffusion"]["steps"] == 50
    assert ckpt["data_shape"] == [2]
    assert "current_model_state" in ckpt  # EMA: state_dict holds the average, this the raw weights


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_fast_dev_run_each_parameterisation(tmp_path, prediction_type):
    metrics, _ = run_train(TINY_TOY + ["trainer.fast_dev_run=true", f"model.prediction_type={prediction_type}",
                                       "sampler.steps=10", "schedule=cosine"], tmp_path)
    assert metrics["nfe"] == 10
    assert np.isfinite(metrics["fd_2d"])


def test_fast_dev_run_mnist(tmp_path, mnist_root):
    metrics, _ = run_train(
        [
            "dataset=mnist",
            "net=unet_mnist",
            f"paths.data_dir={mnist_root}",
            "dataset.subset=256",
            "dataset.batch_size=16",
            "dataset.val_size=32",
            "net.ch=32",
            "net.num_res_blocks=1",
            "trainer.fast_dev_run=true",
            "callbacks.evaluation.num_samples=0",
            "eval.num_samples=4",
            "sampler.steps=5",
            "eval.batch_size=4",
        ],
        tmp_path,
    )
    grid = np.load(tmp_path / "samples.npz")["samples"]
    assert grid.shape == (4, 1, 32, 32) and grid.dtype == np.uint8
    assert (tmp_path / "samples.png").is_file()
    assert metrics["nfe"] == 5


def test_digits_short_run(tmp_path):
    metrics, _ = run_train(
        [
            "dataset=digits",
            "net=unet_small",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "diffusion.steps=20",
            "callbacks.evaluation.num_samples=8",
            "eval.num_samples=8",
        ],
        tmp_path,
    )
    assert metrics["global_step"] == 4
    assert (tmp_path / "samples" / "step_0000004.png").is_file()


def test_resume_from_last_checkpoint(tmp_path):
    run_train(TINY_TOY, tmp_path)
    metrics, _ = run_train(TINY_TOY + ["trainer.max_steps=30", "ckpt_path=last"], tmp_path)
    assert metrics["global_step"] == 30


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    from siddm_lab.errors import CheckpointError

    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        run_train(TINY_TOY + ["ckpt_path=last"], tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        run_train(TINY_TOY + [f"ckpt_path={tmp_path}/nope.ckpt"], tmp_path)


class _NaNAfter(nn.Module):
    """Wraps a net and returns NaN from the n-th training call on."""

    def __init__(self, net, n):
        super().__init__()
        self.net, self.n, self.calls = net, n, 0

    def forward(self, x, t):
        out = self.net(x, t)
        if self.training:
            self.calls += 1
            if self.calls >= self.n:
                return out * float("nan")
        return out


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path):
    from hydra.utils import instantiate

    from siddm_lab.utils.loggers import build_callbacks, build_loggers
    from tests.helpers import compose_cfg

    cfg = compose_cfg(FAST + TINY_TOY + ["trainer.val_check_interval=5",
                                         "callbacks.evaluation.num_samples=0"], tmp_path)
    dm = instantiate(cfg.dataset)
    model = instantiate(cfg.model)
    model.generator.net = _NaNAfter(model.net, 8)
    model.data_shape = (2,)
    trainer = instantiate(cfg.trainer, callbacks=build_callbacks(cfg), logger=build_loggers(cfg))
    with pytest.raises(NonFiniteLossError, match=r"loss 'train/loss' is nan at step 7"):
        trainer.fit(model, datamodule=dm)
    ckpt_dir = tmp_path / "checkpoints"
    last = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert last["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    # the on-exception checkpoint holds the state just before the bad update: still finite
    exc = torch.load(ckpt_dir / "on_exception.ckpt", weights_only=True)
    assert exc["global_step"] == 7
    assert all(torch.isfinite(v).all() for v in exc["current_model_state"].values())


def _cli(*args, timeout=300):
    env = dict(os.environ, WANDB_MODE="offline")
    return subprocess.run([sys.executable, "-m", "siddm_lab.train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["schedule=nope"], "Could not find 'schedule/nope'"),
        (["diffusion.steps=-4"], "diffusion.steps=-4 is invalid: expected a positive integer"),
        (["sampler.steps=2000"], "sampler.steps=2000 is larger than the schedule"),
        (["model.prediction_type=score"], "model.prediction_type='score' is invalid: expected one of eps, x0, v"),
        (["dataset=mnist", "net=unet_mnist", "paths.data_dir=/nonexistent/data"],
         "data directory /nonexistent/data does not exist"),
    ],
)
def test_cli_bad_input_fails_cleanly(tmp_path, args, expected):
    res = _cli(*args, f"paths.log_dir={tmp_path}", "trainer.max_steps=1")
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert expected in out, out[-2000:]
    assert "Traceback" not in out, out[-2000:]


def test_cli_corrupt_mnist_names_file(tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03garbage")
    res = _cli("dataset=mnist", "net=unet_mnist", f"paths.data_dir={tmp_path / 'data'}",
               f"paths.log_dir={tmp_path}", "trainer.max_steps=1")
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "train-images-idx3-ubyte" in out and "expected 47040016" in out, out[-2000:]
    assert "Traceback" not in out


def test_seed_makes_runs_reproducible(tmp_path):
    m1, _ = run_train(TINY_TOY + ["trainer.max_steps=10", "logger=none"], tmp_path / "a")
    m2, _ = run_train(TINY_TOY + ["trainer.max_steps=10", "logger=none"], tmp_path / "b")
    a = np.load(tmp_path / "a" / "samples.npz")["samples"]
    b = np.load(tmp_path / "b" / "samples.npz")["samples"]
    np.testing.assert_array_equal(a, b)
    assert m1["fd_2d"] == m2["fd_2d"]


def test_lightning_is_the_trainer():
    # guard against the entry point silently bypassing Lightning
    from siddm_lab.models import DDPM

    assert issubclass(DDPM, L.LightningModule)


def test_wandb_logger_offline_without_credentials(tmp_path, monkeypatch):
    """logger=wandb with no API key falls back to offline mode (no prompt) and logs the run."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    try:
        run_train(TINY_TOY + ["logger=wandb"], tmp_path / "run")
    finally:
        import wandb

        wandb.finish()
    assert os.environ["WANDB_MODE"] == "offline"
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "run").rglob("*"))[:20]
    files = {p.name for p in runs[0].rglob("*")}
    assert any(name.endswith(".wandb") for name in files), files
    media = list(runs[0].rglob("*.png"))
    assert media, "the periodic scatter plots were not logged"


@pytest.mark.parametrize(
    "args,expected",
    [
        (["diffusion.steps=-4"], "diffusion.steps=-4 is invalid: expected a positive integer"),
        (["model=siddm", "net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4", "ablation.lambda_afd=abc"],
         "ablation.lambda_afd='abc' is invalid: expected a finite number >= 0"),
        (["net.hidden=abc"], "net.hidden='abc' is invalid: expected an integer >= 1"),
        (["dataset=digits", "net=unet_small", "net.channel_mult=[1,2,2,2,2]"],
         "net.image_size=8 is not divisible by 2**(len(net.channel_mult)-1)=16"),
        (["model=siddm", "net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4", "model.z_dist=cauchy"],
         "model.z_dist='cauchy' is unknown; allowed: normal, uniform"),
    ],
)
def test_cli_user_error_exits_2_with_one_line(tmp_path, args, expected):
    """A bad config value: exit status 2 and one `error: ...` line naming the key, value and what is
    allowed, before any work (no run folder content beyond Hydra's), no traceback."""
    res = _cli(*args, "trainer.max_steps=2", f"hydra.run.dir={tmp_path}")
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], res.stderr[-2000:]
    assert "Traceback" not in out and "Error executing job" not in out, out[-2000:]
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.yaml").exists()
    assert not (tmp_path / ".hydra").exists()  # the run folder is accepted only after the objects are built


class _RecordInputs(nn.Module):
    """Stands in for a generator: keeps what it is given (x_t, t), returns zeros."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, z=None):
        self.seen.append((x.detach().clone(), t.detach().clone()))
        return torch.zeros_like(x)


@pytest.mark.parametrize("overrides", [
    ["model=siddm", "net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4"],  # discrete t
    ["experiment=siddm_toy_released"],  # continuous t
])
def test_siddm_validation_x_t_follows_the_forward_marginal(overrides):
    """val/x0_mse feeds the generator x_t ~ q(x_t | x0) = N(sqrt(ᾱ_t) x0, (1 - ᾱ_t) I): one noise draw,
    not a pair x_{t-1} -> x_t that reuses it for both steps (x_t would then be too wide off t = 0).
    Monte Carlo against the closed form: the standardised residual is N(0, 1), independent of x0."""
    from hydra.utils import instantiate

    from tests.helpers import compose_cfg

    model = instantiate(compose_cfg(overrides).model)
    model.data_shape = (2,)
    model.generator = recorder = _RecordInputs()
    model.log = lambda *args, **kwargs: None  # no trainer here
    x0 = 3.0 * torch.randn(40_000, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.validation_step(x0, 0)
    (x_t, t), = recorder.seen
    if model.continuous:
        ab = model.diffusion.alpha_bar(t.double())[:, None]
    else:
        ab = model.diffusion.alphas_cumprod[t][:, None]
    r = (x_t.double() - ab.sqrt() * x0.double()) / (1 - ab).sqrt()
    groups = [r] if model.continuous else [r[t == k] for k in range(model.diffusion.num_timesteps)]
    for g in groups:
        assert len(g) > 5000
        assert abs(float(g.mean())) < 0.03 and abs(float(g.std()) - 1) < 0.03, (float(g.mean()), float(g.std()))
    corr = float(torch.corrcoef(torch.stack([r.flatten(), x0.double().flatten()]))[0, 1])
    assert abs(corr) < 0.03
