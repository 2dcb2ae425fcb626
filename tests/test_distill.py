"""``siddm-distill``: progressive distillation over rounds (plans, teacher hand-over, per-round checkpoints and
evaluations, exact resume across a round boundary) and one-step knowledge distillation (cached teacher pairs),
on a tiny toy teacher; refusals of teachers and settings that cannot be distilled."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.errors import InstantiationException

from siddm_lab.config import compose
from siddm_lab.diffusion.distillation import halving_plans
from siddm_lab.errors import CheckpointError, ConfigError
from siddm_lab.models.loading import load_model
from tests.helpers import FAST, run_train

TEACHER = ["dataset.n_train=1024", "dataset.n_val=128", "dataset.n_eval=300", "dataset.batch_size=128",
           "net.hidden=32", "diffusion.steps=50", "trainer.max_steps=30", "trainer.val_check_interval=30",
           "callbacks.evaluation.num_samples=0", "eval.num_samples=100"]
SMALL = ["callbacks.evaluation.num_samples=64", "eval.num_samples=200", "eval.batch_size=200"]
BUILD_ERRORS = (ConfigError, InstantiationException)  # the CLI reports the ConfigError inside Hydra's wrapper
PD = ["distill.teacher_steps=8", "distill.rounds=3", "distill.steps_per_round=4"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    run_train(TEACHER, out)
    return out / "checkpoints" / "last.ckpt"


def run_distill(overrides, out, teacher_ckpt):
    from siddm_lab.cli.distill import distill

    cfg = compose(FAST + [f"teacher={teacher_ckpt}", *overrides], "distill", out)
    return distill(cfg)


def _history(out):
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def test_halving_plans_nest_and_refuse_a_count_that_does_not_halve():
    plans = halving_plans([15, 13, 11, 9, 7, 5, 3, 1], 3)
    assert plans == [[15, 13, 11, 9, 7, 5, 3, 1], [15, 11, 7, 3], [15, 7]]
    allowed = r"multiple of 2\^3 = 8 steps; the teacher's 12 steps allow rounds in \[1, 2\]"
    with pytest.raises(ConfigError, match=allowed):
        halving_plans(list(range(12, 0, -1)), 3)
    with pytest.raises(ConfigError, match="distill.rounds=0 is invalid"):
        halving_plans([2, 1], 0)


def test_progressive_distillation_runs_every_round_and_hands_the_student_over(tmp_path, teacher):
    out = tmp_path / "pd"
    metrics = run_distill(SMALL + PD, out, teacher)
    # one evaluation and one checkpoint per round, the students taking 4, 2, 1 steps of the trailing plan
    rows = _history(out)
    assert [(r["iteration"], r["round"], r["nfe"]) for r in rows] == [(4, 0, 4), (8, 1, 2), (12, 2, 1)]
    assert {p.name for p in (out / "checkpoints").glob("step_*.ckpt")} == {
        "step_0000004.ckpt", "step_0000008.ckpt", "step_0000012.ckpt"}
    assert metrics["global_step"] == 12 and metrics["nfe"] == 1 and metrics["subsequence"] == "explicit"
    # every round's checkpoint samples its own student's plan with sampler=student
    from tests.test_sample import run_sample

    for step, nfe in [(4, 4), (8, 2), (12, 1)]:
        info = run_sample([f"ckpt={out / 'checkpoints' / f'step_{step:07d}.ckpt'}", "sampler=student",
                           "num_samples=16", "batch_size=16"], tmp_path / f"sample_{step}")
        assert info["nfe"] == nfe and info["sampler"] == "ddim" and info["eta"] == 0.0

    # the student checkpoint samples on its own (no teacher file needed) with the last student's plan
    model, run_cfg = load_model(out / "checkpoints" / "last.ckpt")
    assert type(model).__name__ == "ProgressiveDistillation" and model.round == 2
    assert list(run_cfg.sampler.subsequence.timesteps) == [49]
    assert model.teacher_output_type() == "v" and model.teacher_prediction_type == "eps"
    # the last hand-over copied the round-1 student into the teacher: it differs from the original teacher
    original, _ = load_model(teacher)
    from siddm_lab.diffusion import OwnPlan

    with pytest.raises(ConfigError, match="sampler=student needs a model with its own sampling plan.*which this DDPM"):
        original.get_sampler(OwnPlan(original.diffusion))
    t_now = torch.cat([p.flatten() for p in model.teacher.parameters()])
    t_orig = torch.cat([p.flatten() for p in original.net.parameters()])
    assert not torch.equal(t_now, t_orig)


def test_progressive_distillation_resumes_exactly_across_a_round_boundary(tmp_path, teacher):
    full = tmp_path / "full"
    run_distill(SMALL + PD, full, teacher)
    split = tmp_path / "split"
    fail = ["+callbacks.fail._target_=tests.helpers.FailAt", "+callbacks.fail.step=6"]
    with pytest.raises(RuntimeError, match="injected failure"):
        run_distill(SMALL + PD + fail, split, teacher)
    run_distill(SMALL + PD + ["ckpt_path=last"], split, teacher)
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(split / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["distill_round"] == b["distill_round"] == 2
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert [r["fd_2d"] for r in _history(full)] == [r["fd_2d"] for r in _history(split)]


def test_knowledge_distillation_caches_the_teacher_pairs_and_learns_a_one_step_student(tmp_path, teacher):
    out = tmp_path / "kd"
    kd = ["distill=knowledge", "distill.teacher_steps=10", "distill.num_pairs=256", "trainer.max_steps=60",
          "trainer.val_check_interval=30", "distill.optimizer.lr=1e-3"]
    metrics = run_distill(SMALL + kd, out, teacher)
    pairs = torch.load(out / "kd_pairs.pt", weights_only=True)
    assert pairs["x_T"].shape == pairs["x0"].shape == (256, 2)
    # the pairs are the teacher's own deterministic 10-step DDIM decodings of x_T
    from siddm_lab.diffusion import DDIMSampler

    model, _ = load_model(teacher)
    sampler = DDIMSampler(model.diffusion, eta=0.0, steps=10)
    with torch.no_grad():
        x0 = sampler.sample(model.predict_x0_eps, pairs["x_T"][:16])
    torch.testing.assert_close(pairs["x0"][:16], x0, rtol=1e-5, atol=1e-5)
    # the evaluation's noise (seed 0, as pairs_seed) is not the pairs' x_T: the student is scored on fresh inputs
    x_eval = model.diffusion.prior_sample((256, 2), torch.Generator().manual_seed(0))
    assert torch.cdist(x_eval, pairs["x_T"]).min() > 1e-4
    assert metrics["nfe"] == 1
    rows = _history(out)
    assert len(rows) == 2 and rows[0]["nfe"] == 1
    assert metrics["train/loss"] < 0.5 * float(torch.mean((pairs["x0"]) ** 2))
    # a resumed run reuses the cache; a cache of other settings is refused
    before = (out / "kd_pairs.pt").stat().st_mtime_ns
    run_distill(SMALL + kd[:-3] + ["trainer.max_steps=70", "trainer.val_check_interval=30", "distill.optimizer.lr=1e-3",
                                   "ckpt_path=last"], out, teacher)
    assert (out / "kd_pairs.pt").stat().st_mtime_ns == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "kd_pairs.pt").write_bytes((out / "kd_pairs.pt").read_bytes())
    with pytest.raises(ConfigError, match="holds teacher pairs of other settings"):
        run_distill(SMALL + ["distill=knowledge", "distill.teacher_steps=5", "distill.num_pairs=256",
                             "trainer.max_steps=10"], other, teacher)


def test_teachers_that_cannot_be_distilled_are_refused(tmp_path, teacher):
    siddm = tmp_path / "siddm"
    run_train(["model=siddm", "net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4", "discriminator.hidden=32",
               "dataset.n_train=256", "dataset.n_val=128", "dataset.n_eval=100", "dataset.batch_size=128",
               "trainer.max_steps=2", "trainer.val_check_interval=2", "callbacks.evaluation.num_samples=0",
               "eval.num_samples=100"], siddm)
    with pytest.raises(ConfigError, match="distillation needs a DDPM/DDIM denoiser"):
        run_distill(SMALL + PD, tmp_path / "a", siddm / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        run_distill(SMALL + PD, tmp_path / "b", tmp_path / "missing.ckpt")
    with pytest.raises(BUILD_ERRORS, match="multiple of 2\\^4 = 16 steps"):
        run_distill(SMALL + ["distill.teacher_steps=12", "distill.rounds=4"], tmp_path / "c", teacher)
    with pytest.raises(BUILD_ERRORS, match="steps_per_round=0 is invalid"):
        run_distill(SMALL + ["distill.steps_per_round=0"], tmp_path / "d", teacher)
    with pytest.raises(BUILD_ERRORS, match="larger than the schedule"):
        run_distill(SMALL + ["distill.teacher_steps=64", "distill.rounds=2"], tmp_path / "e", teacher)
    # the student's model names its argument model.prediction_type: the user sets distill.prediction_type
    with pytest.raises(ConfigError, match=r"^distill.prediction_type='score' is invalid: expected one of eps, x0, v"):
        run_distill(SMALL + PD + ["distill.prediction_type=score"], tmp_path / "f", teacher)
    assert not (tmp_path / "f").exists()


def test_a_gamma_teacher_is_refused(tmp_path):
    gamma = tmp_path / "gamma"
    run_train(TEACHER[:-3] + ["noise=gamma", "trainer.max_steps=2", "trainer.val_check_interval=2",
                              "callbacks.evaluation.num_samples=0", "eval.num_samples=100"], gamma)
    with pytest.raises(BUILD_ERRORS, match="trained with noise=gamma"):
        run_distill(SMALL + PD, tmp_path / "a", gamma / "checkpoints" / "last.ckpt")


def test_the_command_reports_a_bad_teacher_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "-m", "siddm_lab.distill", f"teacher={tmp_path / 'none.ckpt'}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: checkpoint" in proc.stderr and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_the_learning_rate_decays_to_zero_within_each_round():
    from siddm_lab.models.distill import linear_decay_per_round

    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = linear_decay_per_round(opt, steps_per_round=4)
    lrs = []
    for _ in range(9):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [1.0, 0.75, 0.5, 0.25, 1.0, 0.75, 0.5, 0.25, 1.0]
    # its state is plain numbers (a resumed run loads it with weights_only=True)
    assert sched.state_dict()["lr_lambdas"] == [{"steps_per_round": 4}]
