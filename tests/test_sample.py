"""siddm-sample: one checkpoint, any sampler; modes; safe loading; multirun."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from siddm_lab.errors import CheckpointError, ConfigError
from tests.conftest import CONF_DIR, ROOT
from tests.helpers import run_train
from tests.test_train import TINY_TOY


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    run_train(TINY_TOY + ["trainer.max_steps=30", "trainer.val_check_interval=30",
                          "callbacks.evaluation.num_samples=0"], out)
    return out / "checkpoints" / "last.ckpt"


def sample_cfg(overrides, out_dir):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("sample", overrides=["progress=false", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
    return cfg


def run_sample(overrides, out_dir):
    from siddm_lab.sampling import sample_checkpoint

    return sample_checkpoint(sample_cfg(overrides, out_dir))


@pytest.mark.parametrize(
    "overrides,nfe",
    [
        (["sampler=ddim", "sampler.steps=10"], 10),
        (["sampler=ddim", "sampler.steps=5", "sampler.eta=1.0"], 5),
        (["sampler=ddim", "sampler.steps=5", "sampler.eta=sigma_hat"], 5),
        (["sampler=ddpm"], 50),
        (["sampler=ddpm", "sampler.steps=7", "sampler.variance_type=fixed_large", "subsequence=linspace"], 7),
        (["sampler=ddim", "subsequence=exponential", "sampler.steps=null"], 8),  # T=50: 0,1,2,4,8,16,32,49
        (["sampler=ddim", "subsequence=explicit", "subsequence.timesteps=[49,20,3]", "sampler.steps=null"], 3),
        (["sampler=ddim", "sampler.steps=10", "subsequence=quadratic"], 9),  # one repeat removed
        (["sampler=ddim", "sampler.steps=10", "subsequence=quadratic", "subsequence.keep_duplicates=true"], 10),
    ],
)
def test_sample_writes_outputs(toy_ckpt, tmp_path, overrides, nfe):
    info = run_sample([f"ckpt={toy_ckpt}", "num_samples=64", "batch_size=32", *overrides], tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["nfe"] == nfe == info["nfe"]
    for key in ("sample_seconds", "fd_2d", "modes_covered", "sampler", "subsequence", "T", "seed"):
        assert key in saved, key
    x = np.load(tmp_path / "samples.npz")["samples"]
    assert x.shape == (64, 2) and np.isfinite(x).all()
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "config.yaml").is_file()


def test_same_seed_same_samples_and_ddim_eta0_is_deterministic(toy_ckpt, tmp_path):
    common = [f"ckpt={toy_ckpt}", "num_samples=32", "sampler.steps=10"]
    run_sample(common + ["sampler.eta=0.5", "seed=3"], tmp_path / "a")
    run_sample(common + ["sampler.eta=0.5", "seed=3"], tmp_path / "b")
    run_sample(common + ["sampler.eta=0.5", "seed=4"], tmp_path / "c")
    a, b, c = (np.load(tmp_path / d / "samples.npz")["samples"] for d in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_ema_and_raw_weights_differ(toy_ckpt, tmp_path):
    common = [f"ckpt={toy_ckpt}", "num_samples=16", "sampler.steps=5"]
    run_sample(common + ["weights=ema"], tmp_path / "ema")
    run_sample(common + ["weights=raw"], tmp_path / "raw")
    ema = np.load(tmp_path / "ema" / "samples.npz")["samples"]
    raw = np.load(tmp_path / "raw" / "samples.npz")["samples"]
    assert not np.allclose(ema, raw)


def test_interpolate_and_reconstruct(toy_ckpt, tmp_path):
    info = run_sample([f"ckpt={toy_ckpt}", "mode=interpolate", "interpolation.pairs=2", "interpolation.frames=5",
                       "sampler.steps=10"], tmp_path / "i")
    strip = np.load(tmp_path / "i" / "interpolation.npz")["samples"]
    assert strip.shape == (10, 2) and info["frames"] == 5
    info = run_sample([f"ckpt={toy_ckpt}", "mode=reconstruct", "reconstruct.num=16", "sampler=ddim",
                       "subsequence=full"], tmp_path / "r")
    assert info["num_reconstructed"] == 16
    assert np.isfinite(info["reconstruction_mse"])
    coarse = run_sample([f"ckpt={toy_ckpt}", "mode=reconstruct", "reconstruct.num=16", "sampler.steps=2"],
                        tmp_path / "r2")
    assert info["reconstruction_mse"] < coarse["reconstruction_mse"]  # more steps, smaller error


def test_steps_larger_than_schedule(toy_ckpt, tmp_path):
    with pytest.raises(ConfigError, match=r"sampler.steps=100 is larger than the schedule \(T=50\)"):
        run_sample([f"ckpt={toy_ckpt}", "sampler.steps=100"], tmp_path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        run_sample([f"ckpt={tmp_path}/nope.ckpt"], tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/siddm_lab_evil_marker"


def test_pickled_objects_are_refused(tmp_path):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "siddm_config": {}, "payload": _Evil()}, bad)
    with pytest.raises(CheckpointError, match="refusing to load"):
        run_sample([f"ckpt={bad}"], tmp_path)
    assert not os.path.exists(MARKER)


def test_corrupt_and_foreign_checkpoints(tmp_path, toy_ckpt):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        run_sample([f"ckpt={corrupt}"], tmp_path)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not written by siddm-train"):
        run_sample([f"ckpt={foreign}"], tmp_path)
    ckpt = torch.load(toy_ckpt, weights_only=True)
    ckpt["siddm_config"]["net"]["hidden"] = 64  # a config that builds a different net
    ckpt["siddm_config"]["model"]["net"]["hidden"] = 64
    mismatch = tmp_path / "mismatch.ckpt"
    torch.save(ckpt, mismatch)
    with pytest.raises(CheckpointError, match="does not match the model"):
        run_sample([f"ckpt={mismatch}"], tmp_path)


def test_cli_multirun_over_sampler_settings(toy_ckpt, tmp_path):
    env = dict(os.environ, WANDB_MODE="offline")
    res = subprocess.run(
        [sys.executable, "-m", "siddm_lab.sample", "-m", f"ckpt={toy_ckpt}", "num_samples=16", "progress=false",
         "sampler.steps=2,5", "sampler.eta=0.0,1.0", f"paths.log_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = sorted(tmp_path.rglob("metrics.json"))
    assert len(metrics) == 4
    seen = {(json.loads(p.read_text())["steps"], json.loads(p.read_text())["eta"]) for p in metrics}
    assert seen == {(2, 0.0), (2, 1.0), (5, 0.0), (5, 1.0)}


def test_cli_bad_input(tmp_path):
    res = subprocess.run([sys.executable, "-m", "siddm_lab.sample", f"ckpt={tmp_path}/missing.ckpt",
                          f"paths.log_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "does not exist" in res.stderr and "Traceback" not in res.stderr


def test_cli_refuses_a_checkpoint_whose_config_calls_a_foreign_target(tmp_path):
    """The stored config is instantiated by Hydra: ``pathlib.Path.touch`` would create a file before
    the model failed to load. It is refused before anything is called, in one line."""
    marker = tmp_path / "touched"
    bad = tmp_path / "payload.ckpt"
    torch.save({"state_dict": {}, "siddm_config": {"model": {
        "_target_": "siddm_lab.models.DDPM", "net": {"_target_": "pathlib.Path.touch", "self": str(marker)}}}}, bad)
    res = subprocess.run([sys.executable, "-m", "siddm_lab.sample", f"ckpt={bad}", f"hydra.run.dir={tmp_path}/run"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "model.net._target_" in res.stderr and "pathlib.Path.touch" in res.stderr, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert not marker.exists()


def test_the_stored_dataset_config_is_checked_too(toy_ckpt, tmp_path):
    """siddm-sample rebuilds the run's datamodule from the stored config as well."""
    marker = tmp_path / "touched"
    ckpt = torch.load(toy_ckpt, weights_only=True)
    ckpt["siddm_config"]["dataset"]["distribution"] = {"_target_": "pathlib.Path.touch", "_args_": [str(marker)]}
    bad = tmp_path / "payload.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match=r"dataset\.distribution\._target_.*pathlib\.Path\.touch"):
        run_sample([f"ckpt={bad}", "num_samples=8"], tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("overrides,message", [
    # one step of a spacing is t=0 alone: the reverse process would be skipped
    (["subsequence=quadratic", "sampler.steps=1"], "single step t=0.*subsequence=trailing"),
    (["subsequence=uniform", "sampler.steps=1"], "single step t=0"),
    (["subsequence=linspace", "sampler.steps=1"], "single step t=0"),
    (["subsequence=leading", "sampler.steps=1"], "single step t=0"),
    # fixed sequences take no S: a given one was silently ignored while metrics.json recorded it
    (["subsequence=exponential", "sampler.steps=20"], "'exponential' has its own length.*sampler.steps=null"),
    (["subsequence=last_k", "subsequence.k=10", "sampler.steps=20"], "'last_k' has its own length"),
    (["subsequence=explicit", "subsequence.timesteps=[40,10,49,10,0]", "sampler.steps=50"],
     "'explicit' has its own length"),
])
def test_plans_that_would_run_something_else_than_asked_are_refused(toy_ckpt, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_sample([f"ckpt={toy_ckpt}", "num_samples=8", *overrides], tmp_path)


def test_metrics_record_the_plan_that_ran(toy_ckpt, tmp_path):
    """steps/nfe/subsequence in metrics.json are those of the timesteps that ran."""
    one = run_sample([f"ckpt={toy_ckpt}", "num_samples=8", "subsequence=trailing", "sampler.steps=1"], tmp_path / "a")
    assert (one["subsequence"], one["steps"], one["nfe"]) == ("trailing", 1, 1)
    full = run_sample([f"ckpt={toy_ckpt}", "num_samples=8", "subsequence=quadratic", "sampler.steps=null"],
                      tmp_path / "b")
    assert (full["subsequence"], full["steps"], full["nfe"]) == ("full", 50, 50)  # every timestep of T=50
    explicit = run_sample([f"ckpt={toy_ckpt}", "num_samples=8", "subsequence=explicit",
                           "subsequence.timesteps=[40,10,49,10,0]", "sampler.steps=null"], tmp_path / "c")
    assert (explicit["subsequence"], explicit["nfe"]) == ("explicit", 4)  # the repeated 10 is removed
    assert explicit["steps"] == explicit["nfe"]
    saved = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert (saved["steps"], saved["nfe"]) == (4, 4)


@pytest.fixture(scope="module")
def gan_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("gan")
    run_train(["model=siddm", "net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4", "net.hidden=16",
               "discriminator.hidden=16", "dataset.n_train=256", "dataset.n_val=64", "dataset.n_eval=64",
               "dataset.batch_size=64", "trainer.max_steps=2", "trainer.val_check_interval=2",
               "callbacks.evaluation.num_samples=0", "eval.num_samples=16"], out)
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("mode", ["interpolate", "reconstruct", "invert"])
def test_a_diffusion_gan_is_not_decoded_as_if_deterministic(gan_ckpt, tmp_path, mode):
    """Interpolation and DDIM inversion need a deterministic decoder; a diffusion GAN draws a latent at
    every step (its own seeded z was bypassed there before): refused with what to use instead."""
    with pytest.raises(ConfigError, match=f"sampler=ddim with mode={mode} needs a deterministic denoiser.*diffusion "
                                          f"GAN.*fit it with mode={mode}: none \\(sample it with mode=sample\\)"):
        run_sample([f"ckpt={gan_ckpt}", f"mode={mode}", "sampler=ddim", "sampler.steps=4"], tmp_path)


def test_a_diffusion_gan_samples_with_its_chain_and_its_seed(gan_ckpt, tmp_path):
    a = run_sample([f"ckpt={gan_ckpt}", "sampler=generator", "num_samples=32", "seed=5"], tmp_path / "a")
    b = run_sample([f"ckpt={gan_ckpt}", "sampler=generator", "num_samples=32", "seed=5"], tmp_path / "b")
    assert a["sampler"] == "generator" and a["nfe"] == 4
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "samples.npz")["samples"],
                                  np.load(tmp_path / "b" / "samples.npz")["samples"])
    assert b["fd_2d"] == a["fd_2d"]


def test_reconstruct_needs_deterministic_ddim(toy_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="mode=reconstruct.*sampler=ddim sampler.eta=0"):
        run_sample([f"ckpt={toy_ckpt}", "mode=reconstruct", "sampler=ddim", "sampler.eta=0.5",
                    "sampler.steps=5"], tmp_path)


def test_deq_and_picard_sample_a_ddpm_checkpoint_like_sequential_ddim(toy_ckpt, tmp_path):
    common = [f"ckpt={toy_ckpt}", "num_samples=64", "batch_size=64", "sampler.steps=10"]
    run_sample(common + ["sampler=ddim"], tmp_path / "ddim")
    deq = run_sample(common + ["sampler=deq", "sampler.tol=1e-6"], tmp_path / "deq")
    picard = run_sample(common + ["sampler=picard", "sampler.window=4", "sampler.tol=1e-6"], tmp_path / "picard")
    ref = np.load(tmp_path / "ddim" / "samples.npz")["samples"]
    for name in ("deq", "picard"):
        np.testing.assert_allclose(np.load(tmp_path / name / "samples.npz")["samples"], ref, atol=1e-3)
    assert deq["sampler"] == "deq" and deq["nfe"] == deq["iterations"] * 10 and deq["residual"] < 1e-6
    assert picard["iterations"] >= 3 and picard["converged"]


def test_fixed_point_samplers_refuse_a_diffusion_gan(gan_ckpt, tmp_path):
    for name in ("deq", "picard"):
        with pytest.raises(ConfigError, match=f"sampler={name} needs a deterministic denoiser.*which this "
                                              f"diffusion GAN \\(SIDDM: it samples with its generator chain\\).*"
                                              f"fit it: .*generator"):
            run_sample([f"ckpt={gan_ckpt}", f"sampler={name}", "sampler.steps=4", "num_samples=8"], tmp_path / name)


@pytest.mark.parametrize("method", ["backprop", "phantom", "ift"])
def test_invert_a_ddpm_checkpoint(toy_ckpt, tmp_path, method, caplog):
    """mode=invert: the loss falls from its start, the best x_T decodes (sequentially) to about the reported
    loss, the accounting (time, NFE, fixed-point iterations, peak memory) is in metrics.json, and the log
    reports progress every tenth of the Adam steps."""
    caplog.set_level(logging.INFO, logger="siddm_lab")
    info = run_sample([f"ckpt={toy_ckpt}", "mode=invert", "sampler=deq", "sampler.steps=10", "sampler.tol=1e-5",
                       "invert.num=12", "invert.iters=25", "invert.lr=0.05", f"invert.method={method}"], tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["invert_method"] == method and saved["num_inverted"] == 12
    assert saved["min_loss"] < 0.5 * saved["loss_curve"][0]
    assert abs(saved["final_mse"] - saved["min_loss"]) < 0.1 * saved["min_loss"] + 1e-3
    assert saved["seconds_per_image"] > 0 and saved["invert_nfe_per_image"] >= 25 * 10
    if method == "backprop":
        assert saved["fixed_point_iterations_mean"] is None and saved["invert_nfe_per_image"] == 25 * 10
    else:
        assert saved["fixed_point_iterations_mean"] >= 1
    assert "peak_memory_mb" in saved and (tmp_path / "inversion.png").is_file()
    assert info["min_loss"] == saved["min_loss"]
    steps = [int(m) for m in re.findall(r"invert images 1-12 of 12: Adam step (\d+)/25, loss", caplog.text)]
    assert steps == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25]
    last = re.search(r"Adam step 25/25, loss ([0-9.e+-]+), lowest per image so far ([0-9.e+-]+)", caplog.text)
    assert float(last[1]) == pytest.approx(saved["loss_curve"][-1], rel=1e-3)
    assert float(last[2]) == pytest.approx(saved["min_loss"], rel=1e-3)


def test_invert_refuses_stochastic_decoders_and_bad_settings(toy_ckpt, tmp_path):
    common = [f"ckpt={toy_ckpt}", "mode=invert", "invert.iters=2"]
    with pytest.raises(ConfigError, match="mode=invert decodes with deterministic DDIM"):
        run_sample(common + ["sampler=ddim", "sampler.eta=1.0", "sampler.steps=5"], tmp_path / "a")
    with pytest.raises(ConfigError, match="invert.method=phantom differentiates through the DEQ fixed point"):
        run_sample(common + ["sampler=ddim", "sampler.steps=5"], tmp_path / "b")
    with pytest.raises(ConfigError, match="invert.init='zeros' is unknown"):
        run_sample(common + ["sampler=deq", "sampler.steps=5", "invert.init=zeros"], tmp_path / "c")
    with pytest.raises(ConfigError, match="invert.method='adam' is unknown"):
        run_sample(common + ["sampler=deq", "sampler.steps=5", "invert.method=adam"], tmp_path / "d")


def test_sampling_reports_depth_wall_time_and_peak_memory(toy_ckpt, tmp_path):
    """Accounting of every sampler: NFE per sample, sequential depth (solver iterations for DEQ), residual per
    iteration for the fixed-point samplers, wall time and peak memory."""
    common = [f"ckpt={toy_ckpt}", "num_samples=64", "batch_size=32", "sampler.steps=10"]
    ddim = run_sample(common + ["sampler=ddim"], tmp_path / "ddim")
    deq = run_sample(common + ["sampler=deq", "sampler.tol=1e-3"], tmp_path / "deq")
    nometrics = run_sample(common + ["sampler=ddim", "metrics=false"], tmp_path / "plain")
    assert ddim["nfe"] == ddim["depth"] == 10
    assert deq["depth"] == deq["iterations"] and deq["nfe"] == pytest.approx(10 * deq["iterations"], rel=0.5)
    saved = json.loads((tmp_path / "deq" / "metrics.json").read_text())
    assert 1 <= len(saved["residuals"]) <= saved["iterations"]  # per iteration, of the first batch
    assert saved["residuals"][-1] < 1e-3 and saved["converged"]
    for info in (ddim, deq, nometrics):
        assert info["sample_seconds"] > 0 and info["peak_memory_mb"] is not None and info["peak_memory_mb"] >= 0
