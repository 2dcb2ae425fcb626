"""Bad input and failures: one clear message naming the key, value and what is allowed, an exit status other
than 0, and nothing lost (an earlier run's files byte-identical, no result reported that did not run)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from siddm_lab.config import validate
from siddm_lab.errors import CheckpointError, ConfigError, NonFiniteLossError, NonFiniteSamplesError
from tests.conftest import ROOT
from tests.helpers import compose_cfg, run_train
from tests.test_collect import _job
from tests.test_sample import run_sample, toy_ckpt  # noqa: F401  (fixture)
from tests.test_train import TINY_TOY

GAN = ["model=siddm", "net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4"]


def _cli(module: str, *args, timeout=300):
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _tree(folder) -> dict:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(res, expected: str) -> None:
    out = res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], res.stderr[-3000:]
    assert "Traceback" not in out, out[-3000:]


# ------------------------------------------------------------------ values checked before any work
@pytest.mark.parametrize("overrides,expected", [
    # 6: an infinite eta passed the ">= 0" check and gave all-NaN samples
    (["sampler=ddim", "sampler.eta=inf"], "sampler.eta=inf is invalid: expected a finite number >= 0 or 'sigma_hat'"),
    # 8: Lightning takes only an integer here (training is counted in iterations)
    (["trainer.val_check_interval=0.5"], "trainer.val_check_interval=0.5 is invalid: expected a positive integer"),
    # 9: were a raw ValueError / TypeError from torch.optim without the key
    ([*GAN, "model.optimizer_g.lr=-1"], "model.optimizer_g.lr=-1 is invalid: expected a finite positive number"),
    ([*GAN, "model.optimizer_d.lr=abc"], "model.optimizer_d.lr='abc' is invalid: expected a finite positive number"),
    # 15: was reported as ablation.lambda_afd, a key the user did not set
    ([*GAN, "model.objective.lambda_afd=-1"], "model.objective.lambda_afd=-1 is invalid: expected a finite number"),
    (["eval.steps=[10,abc]"], "eval.steps=[10, 'abc'] is invalid: expected null (sampler.steps), a positive integer"),
])
def test_bad_values_name_the_key_set(overrides, expected):
    from siddm_lab.training import preflight

    with pytest.raises(ConfigError) as e:
        preflight(compose_cfg(overrides))
    assert expected in str(e.value), str(e.value)


@pytest.mark.parametrize("overrides,expected", [
    ([*GAN, "model.z_dist=cauchy"], "model.z_dist='cauchy' is unknown; allowed: normal, uniform"),
    ([*GAN, "ablation.lambda_afd=-1"], "ablation.lambda_afd=-1 is invalid: expected a finite number >= 0 "
                                       "(given to model.objective.lambda_afd)"),
    (["sampler=ddim", "sampler.eta=-1"], "sampler.eta=-1 is invalid: expected a finite number >= 0 or 'sigma_hat'"),
    (["diffusion.steps=0"], "diffusion.steps=0 is invalid: expected a positive integer"),
    (["dataset.batch_size=0"], "dataset.batch_size=0 is invalid: expected a positive integer"),
    (["seeds=[1,1]"], "seeds=[1, 1] is invalid: expected a list of distinct non-negative integers"),
])
def test_a_value_an_object_refuses_stops_the_run_before_any_file(tmp_path, overrides, expected):
    """The objects check their own settings when the train entry builds them, before it writes anything to the
    run folder (no config.yaml, no checkpoints)."""
    with pytest.raises(ConfigError) as e:
        run_train(TINY_TOY + overrides, tmp_path)
    assert str(e.value).startswith(expected), str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_eval_steps_beyond_the_schedule_is_refused_at_the_start(tmp_path):
    """7: eval.steps=2000 on T=50 was found after training, as sampler.steps=2000."""
    with pytest.raises(ConfigError) as e:
        run_train(TINY_TOY + ["eval.steps=2000"], tmp_path)
    assert "eval.steps=2000 is larger than the schedule (T=50); allowed: 1..50" in str(e.value), str(e.value)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.yaml").exists()
    with pytest.raises(ConfigError, match=r"eval.steps=\[10, 2000\]: the step count 2000 is larger"):
        run_train(TINY_TOY + ["eval.steps=[10,2000]"], tmp_path)


def test_distillation_names_its_teacher_steps():
    """15: a teacher plan longer than the schedule was reported as sampler.steps=128."""
    from siddm_lab.models.distill import ProgressiveDistillation
    from siddm_lab.nets import TimeMLP

    with pytest.raises(ConfigError) as e:
        ProgressiveDistillation(TimeMLP(hidden=8), {"name": "linear", "T": 50}, torch.optim.Adam, teacher_steps=128,
                                rounds=7)
    assert str(e.value).startswith("distill.teacher_steps=128 is larger than the schedule (T=50)"), str(e.value)


def test_attention_resolutions_must_match_a_level():
    """16: a resolution that no level of the UNet has was dropped silently."""
    from siddm_lab.nets import UNet

    with pytest.raises(ConfigError) as e:
        UNet(in_channels=1, image_size=32, ch=32, channel_mult=(1, 2, 2), attn_resolutions=[3])
    assert "net.attn_resolutions=[3] holds [3]" in str(e.value) and "its levels are [32, 16, 8]" in str(e.value)
    UNet(in_channels=1, image_size=32, ch=32, channel_mult=(1, 2, 2), attn_resolutions=[16, 8])  # still fine


# ------------------------------------------------------------------ 5: what ran is recorded
def test_uniform_spacing_records_the_steps_that_ran(caplog):
    """sampler.steps=30 with subsequence=uniform on T=50 runs 50 steps (T//S = 1): metrics.json said steps 30."""
    from siddm_lab.diffusion import DDIMSampler, GaussianDiffusion

    diffusion = GaussianDiffusion.from_schedule(name="linear", T=50)
    with caplog.at_level(logging.WARNING):
        sampler = DDIMSampler(diffusion, steps=30, subsequence={"name": "uniform"})
    s = sampler.settings()
    assert (s["steps"], s["nfe"], s["steps_requested"]) == (50, 50, 30)
    assert "runs 50 steps on T=50" in caplog.text and "exactly 30 steps: leading, linspace, trailing" in caplog.text
    exact = DDIMSampler(diffusion, steps=10, subsequence={"name": "uniform"}).settings()
    assert exact["steps"] == 10 and "steps_requested" not in exact
    assert DDIMSampler(GaussianDiffusion.from_schedule(name="linear", T=1000), steps=300).settings()["steps"] == 334


# ------------------------------------------------------------------ 6: non-finite samples are no result
def test_a_diverged_model_reports_no_metrics(tmp_path):
    """A learning rate of 3e3 diverges with a finite loss (~1e32), past the NaN stop: the samples are NaN and
    metrics.json said fd_2d nan with exit 0. The evaluation now stops, the checkpoints are kept."""
    with pytest.raises(NonFiniteSamplesError) as e:
        run_train(TINY_TOY + ["model.optimizer.lr=3e3", "trainer.max_steps=100",
                              "callbacks.evaluation.num_samples=0"], tmp_path)
    msg = str(e.value)
    assert "samples hold NaN or infinite values" in msg and "model.optimizer.lr" in msg, msg
    assert "the last logged training loss is" in msg and "no metrics.json is written" in msg, msg
    assert not (tmp_path / "metrics.json").exists()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_sampling_with_a_huge_eta_stops_instead_of_reporting_nan(tmp_path, toy_ckpt):  # noqa: F811
    with pytest.raises(NonFiniteSamplesError, match="200 of 200 samples hold NaN or infinite values"):
        run_sample([f"ckpt={toy_ckpt}", "sampler=ddim", "sampler.steps=10", "sampler.eta=1e300", "num_samples=200"],
                   tmp_path)
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "config.yaml").exists()


# ------------------------------------------------------------------ siddm-sample
@pytest.mark.parametrize("overrides,expected", [
    (["num_samples=1"], "num_samples=1 is too few for the metrics"),  # 10: was "need at least 2 samples"
    (["device=tpu"], "device='tpu' is invalid: expected auto, cpu, cuda or cuda:<index>"),  # 11: torch's RuntimeError
    (["sampler=ddim", "sampler.eta=-1"], "sampler.eta=-1 is invalid: expected a finite number >= 0 or 'sigma_hat'"),
    (["sampler=ddim", "sampler.steps=51"], "sampler.steps=51 is larger than the schedule (T=50)"),
    (["sampler=generator"], "sampler=generator needs a diffusion GAN's generator chain"),
])
def test_sample_values_are_checked_before_sampling(tmp_path, toy_ckpt, overrides, expected):  # noqa: F811
    with pytest.raises(ConfigError) as e:
        run_sample([f"ckpt={toy_ckpt}", *overrides], tmp_path)
    assert expected in str(e.value), str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_sampler_the_checkpoint_refuses_leaves_the_folder_untouched(tmp_path, toy_ckpt):  # noqa: F811
    """siddm-sample builds the sampler for the checkpoint's model before it accepts its folder: a refused sampler
    leaves no .hydra/ files or log there (the CLI), as a bad value of the config does."""
    out = tmp_path / "s"
    res = _cli("siddm_lab.sample", f"ckpt={toy_ckpt}", "sampler=ddim", "sampler.eta=-1", "progress=false",
               f"hydra.run.dir={out}")
    assert res.returncode == 2, res.stderr[-2000:]
    _one_error_line(res, "sampler.eta=-1 is invalid: expected a finite number >= 0 or 'sigma_hat'")
    assert not out.exists() or _tree(out) == {}, sorted(_tree(out))


@pytest.mark.slow
def test_sample_refuses_to_overwrite_an_earlier_result(tmp_path, toy_ckpt):  # noqa: F811
    """4: sampling into a folder that holds a result replaced its metrics.json silently (exit 0). Refused, with
    the way out; the earlier result, its .hydra/ and its log byte-identical. 18: a failed run leaves no
    config.yaml as if it were a result."""
    out = tmp_path / "s"
    args = ["sampler=ddim", "sampler.steps=5", "num_samples=200", "progress=false", f"hydra.run.dir={out}"]
    assert _cli("siddm_lab.sample", f"ckpt={toy_ckpt}", *args).returncode == 0
    before = _tree(out)
    assert {"metrics.json", "config.yaml", ".hydra/overrides.yaml", "sample.log"} <= set(before)
    res = _cli("siddm_lab.sample", f"ckpt={toy_ckpt}", *args[:-1], "sampler.steps=10", f"hydra.run.dir={out}")
    assert res.returncode == 2
    _one_error_line(res, f"{out} already holds an earlier result (metrics.json, samples.npz, config.yaml)")
    assert "hydra.run.dir=<new folder>" in res.stderr
    assert _tree(out) == before
    failed = tmp_path / "failed"
    res = _cli("siddm_lab.sample", f"ckpt={tmp_path / 'missing.ckpt'}", *args[:-1], f"hydra.run.dir={failed}")
    assert res.returncode == 2
    _one_error_line(res, "missing.ckpt does not exist")
    assert not (failed / "config.yaml").exists() and not (failed / "metrics.json").exists()


def test_sample_help_lists_only_the_groups_it_uses():
    """18: siddm-sample --help listed every group of conf/, the training ones too, which it then refuses."""
    res = _cli("siddm_lab.sample", "--help")
    assert res.returncode == 0, res.stderr[-2000:]
    groups = {line.split(":")[0] for line in res.stdout.split("== Config ==")[0].splitlines() if ": " in line}
    assert groups == {"sampler", "subsequence", "paths", "experiment"}, res.stdout[:2000]
    experiments = next(line for line in res.stdout.splitlines() if line.startswith("experiment: "))
    assert "ddim_table1" in experiments and "demo" not in experiments


# ------------------------------------------------------------------ checkpoints
def test_a_checkpoint_model_target_must_be_a_model(tmp_path):
    """13: model._target_ naming a class the configs use elsewhere (a logger) was built, then crashed with a raw
    AttributeError."""
    from siddm_lab.models.loading import load_model

    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "siddm_config": {"model": {"_target_": "lightning.pytorch.loggers.CSVLogger",
                                                             "save_dir": str(tmp_path / "made")}}}, path)
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    msg = str(e.value)
    assert "model._target_='lightning.pytorch.loggers.CSVLogger'" in msg and "not as a model" in msg, msg
    assert "logger" in msg and "siddm_lab.models.DDPM" in msg, msg
    assert not (tmp_path / "made").exists()  # nothing was built


# ------------------------------------------------------------------ training messages
class NaNWeightsAt(Callback):
    """Sets every weight to NaN at the start of training step ``step``: that step's loss is NaN (added with
    ``+callbacks.nan._target_=tests.test_failures.NaNWeightsAt +callbacks.nan.step=N``)."""

    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))


@pytest.mark.parametrize("step,kept", [(0, False), (3, True)])
def test_a_nan_stop_says_whether_a_checkpoint_is_kept(tmp_path, step, kept):
    """18: a NaN loss at step 0 said "the last checkpoint is kept" where there is none."""
    with pytest.raises(NonFiniteLossError) as e:
        run_train(TINY_TOY + ["callbacks.evaluation.num_samples=0",
                              "+callbacks.nan._target_=tests.test_failures.NaNWeightsAt",
                              f"+callbacks.nan.step={step}"],
                  tmp_path)
    msg = str(e.value)
    assert f"is nan at step {step};" in msg, msg
    assert ("the last checkpoint is kept" in msg) == kept and ("no checkpoint is written" in msg) == (not kept), msg
    assert (tmp_path / "checkpoints" / "on_exception.ckpt").is_file() == kept


def test_the_exception_checkpoint_says_it_saves_the_whole_state(tmp_path, caplog):
    """18: every on-exception checkpoint logged Lightning's "`weights_only` was not set, defaulting to False",
    which reads like an unsafe load."""
    with caplog.at_level(logging.INFO), pytest.raises(RuntimeError, match="injected failure"):
        run_train(TINY_TOY + ["callbacks.evaluation.num_samples=0", "+callbacks.fail._target_=tests.helpers.FailAt",
                              "+callbacks.fail.step=3"], tmp_path)
    assert (tmp_path / "checkpoints" / "on_exception.ckpt").is_file()
    assert "weights_only" not in caplog.text


# ------------------------------------------------------------------ siddm-collect
def test_collect_log_axis_names_the_jobs_without_positive_values(tmp_path, capsys):
    """17: "the jobs have nan" without the job; 18: --out was created although nothing was written."""
    from siddm_lab.cli.collect import main

    _job(tmp_path, "0_sampler.steps=10", ["sampler.steps=10"], {"nfe": 10, "fd": 3.0})
    _job(tmp_path, "1_sampler.steps=50", ["sampler.steps=50"], {"nfe": 50, "fd": "nan"})
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--metric", "fd", "--logy", "--out", str(out)])
    msg = str(e.value.code)
    assert "1_sampler.steps=50: fd=nan" in msg and "0_sampler.steps=10" not in msg, msg
    assert not out.exists()
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--rows", "nope", "--out", str(out)])
    assert not out.exists()


# ------------------------------------------------------------------ the CLI: folders and sweeps
@pytest.mark.slow
def test_a_refused_run_leaves_the_earlier_runs_files_byte_identical(tmp_path):
    """3: a run refused in an earlier run's folder had Hydra rewrite its .hydra/*.yaml (and append to its log)
    first, so that siddm-collect listed the earlier metrics under the refused run's values."""
    args = ["trainer.enable_progress_bar=false", *TINY_TOY, "trainer.max_steps=4", "trainer.val_check_interval=4",
            "callbacks.evaluation.num_samples=0"]
    assert _cli("siddm_lab.train", *args, f"hydra.run.dir={tmp_path}").returncode == 0
    before = _tree(tmp_path)
    assert {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "train.log", "metrics.json"} <= \
        set(before)
    for extra, expected in [(["net.hidden=64"], "already holds an earlier run"),
                            (["net.hidden=64", "ckpt_path=last"], "cannot resume from"),
                            (["diffusion.steps=-4"], "diffusion.steps=-4 is invalid")]:
        res = _cli("siddm_lab.train", *args, *extra, f"hydra.run.dir={tmp_path}")
        assert res.returncode == 2, res.stderr[-2000:]
        _one_error_line(res, expected)
        assert _tree(tmp_path) == before, extra


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    """12: hydra.run.dir=<an existing file> was a raw FileExistsError."""
    existing = tmp_path / "notes.txt"
    existing.write_text("mine\n")
    res = _cli("siddm_lab.train", "trainer.max_steps=1", f"hydra.run.dir={existing}")
    assert res.returncode == 2
    _one_error_line(res, f"hydra.run.dir={existing} is an existing file, not a folder")
    assert existing.read_text() == "mine\n"


def test_a_sweep_of_sample_jobs_checks_each_sampler_before_the_first_job(tmp_path, toy_ckpt):  # noqa: F811
    """Every job of a siddm-sample sweep builds its sampler for the checkpoint before any job runs (the checkpoint
    loaded once): an invalid one stops the sweep, named, with nothing written."""
    sweep = tmp_path / "sweep"
    res = _cli("siddm_lab.sample", "-m", f"ckpt={toy_ckpt}", "sampler=ddim", "sampler.steps=5", "num_samples=200",
               "progress=false", "sampler.eta=0,-1,abc", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 2, res.stderr[-2000:]
    msg = res.stderr
    assert "2 of the 3 jobs of this sweep are invalid, so none was run" in msg, msg[-2000:]
    assert "job 1 (sampler.eta=-1): sampler.eta=-1 is invalid: expected a finite number >= 0" in msg, msg[-2000:]
    assert "job 2 (sampler.eta=abc)" in msg and "Traceback" not in msg, msg[-2000:]
    assert not sweep.exists()


def test_a_sweep_with_an_invalid_job_runs_none_and_names_it(tmp_path):
    """14: diffusion.steps=50,0,40 ran job 0, stopped at job 1 without naming it and skipped job 2."""
    sweep = tmp_path / "sweep"
    res = _cli("siddm_lab.train", "-m", *TINY_TOY, "trainer.max_steps=2", "diffusion.steps=50,0,40,-1",
               f"hydra.sweep.dir={sweep}")
    assert res.returncode == 2
    msg = res.stderr
    assert "2 of the 4 jobs of this sweep are invalid, so none was run" in msg, msg[-2000:]
    assert "job 1 (diffusion.steps=0): diffusion.steps=0 is invalid: expected a positive integer" in msg, msg[-2000:]
    assert "job 3 (diffusion.steps=-1)" in msg and "job 0 " not in msg and "Traceback" not in msg, msg[-2000:]
    assert not sweep.exists()


def test_distill_values_name_the_distill_keys():
    """15: siddm-distill's own keys are validated as the user sets them (distill.*), not as the student run's."""
    from siddm_lab.config import compose

    with pytest.raises(ConfigError, match=r"distill.optimizer.lr=-1 is invalid: expected a finite positive number"):
        validate(compose(["teacher=x.ckpt", "distill.optimizer.lr=-1"], "distill"))
