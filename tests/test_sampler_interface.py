"""The one sampler interface: a new sampler is one class and one YAML, and it serves periodic evaluation,
the final evaluation and siddm-sample with no edit elsewhere; whether it suits a model is decided in one
place (``check_sampler``) with one message."""

from __future__ import annotations

import json

import pytest
import torch

from siddm_lab.diffusion import (
    REQUIREMENTS,
    SAMPLERS,
    DDIMSampler,
    Denoiser,
    GaussianDiffusion,
    GeneratorChain,
    Sampler,
    check_sampler,
    prepare_sampler,
)
from siddm_lab.errors import ConfigError
from tests.helpers import run_train
from tests.test_train import TINY_TOY


class OneStepX0(Sampler):
    """A sampler written for this test: the model's x0' at t = T-1, in one network call."""

    name = "one_step_x0"
    requires = frozenset({"x0_eps", "discrete_time"})
    stochastic = False

    def __init__(self, diffusion, scale: float = 1.0):
        super().__init__(diffusion)
        self.scale = scale

    @property
    def nfe(self) -> int:
        return 1

    def settings(self) -> dict:
        return {**super().settings(), "scale": self.scale}

    def sample(self, denoiser, x_T, rng=None, progress=False):
        t = torch.full((x_T.shape[0],), self.diffusion.num_timesteps - 1, dtype=torch.long, device=x_T.device)
        return self.scale * denoiser.x0_eps(x_T, t)[0]


YAML = """# one network call: the model's x0' at t = T-1
_target_: tests.test_sampler_interface.OneStepX0
_partial_: true
scale: 1.0
"""


@pytest.fixture
def extra_conf(tmp_path):
    """A config folder with the new sampler's one YAML, added to the search path as a user would."""
    (tmp_path / "conf" / "sampler").mkdir(parents=True)
    (tmp_path / "conf" / "sampler" / "one_step_x0.yaml").write_text(YAML)
    return f"hydra.searchpath=[file://{tmp_path / 'conf'}]"


def test_a_new_sampler_is_one_class_and_one_yaml(extra_conf, tmp_path):
    from siddm_lab.sampling import sample_checkpoint
    from tests.test_sample import sample_cfg

    assert SAMPLERS["one_step_x0"] is OneStepX0  # registered by being defined
    # training: periodic evaluation and the final evaluation use it
    out = tmp_path / "run"
    metrics, _ = run_train(TINY_TOY + [extra_conf, "sampler=one_step_x0", "sampler.scale=0.5",
                                       "callbacks.evaluation.num_samples=64"], out)
    result = json.loads((out / "metrics.json").read_text())
    assert result["sampler"] == "one_step_x0" and result["nfe"] == 1 and result["scale"] == 0.5
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == [10, 20] and all("fd_2d" in h for h in history)
    # siddm-sample: the same class from the same YAML, on a checkpoint trained with a built-in sampler (a
    # checkpoint whose stored config names a class is loaded once a config of the project's conf/ names it)
    plain = tmp_path / "plain"
    run_train(TINY_TOY + ["callbacks.evaluation.num_samples=0", "eval.num_samples=16"], plain)
    info = sample_checkpoint(sample_cfg([extra_conf, f"ckpt={plain / 'checkpoints' / 'last.ckpt'}",
                                         "sampler=one_step_x0", "num_samples=32"], tmp_path / "sample"))
    assert info["sampler"] == "one_step_x0" and info["nfe"] == 1 and info["scale"] == 1.0
    samples = torch.from_numpy(__import__("numpy").load(tmp_path / "sample" / "samples.npz")["samples"])
    assert samples.shape == (32, 2) and torch.isfinite(samples).all()


def test_one_refusal_names_what_is_missing_and_what_fits():
    d = GaussianDiffusion.from_schedule("linear", 10)
    gan = Denoiser(d, x0=lambda x, t: x, deterministic=False, description="this ensemble of 2 diffusion GANs")
    with pytest.raises(ConfigError) as e:
        check_sampler(OneStepX0(d), gan)
    msg = str(e.value)
    assert msg.startswith("sampler=one_step_x0 needs " + REQUIREMENTS["x0_eps"])
    assert "which this ensemble of 2 diffusion GANs does not offer" in msg
    assert msg.endswith("Samplers that fit it: generator")
    # a use adds its own requirement (a decoding mode: a deterministic decoder) and a hint when nothing fits
    denoiser_gan = Denoiser(d, x0_eps=lambda x, t: (x, x), x0=lambda x, t: x, deterministic=False,
                            description="this diffusion GAN")
    with pytest.raises(ConfigError, match=r"sampler=ddim with mode=reconstruct needs a deterministic denoiser.*"
                                          r"fit it with mode=reconstruct: none \(use mode=sample\)$"):
        check_sampler(DDIMSampler(d, steps=5), denoiser_gan, ("deterministic",), "mode=reconstruct", "use mode=sample")
    check_sampler(DDIMSampler(d, steps=5), denoiser_gan)  # DDIM on a single discrete GAN's x0' is allowed
    check_sampler(GeneratorChain(d), denoiser_gan)


def test_a_sampler_that_takes_its_plan_from_the_model_resolves_to_it():
    from siddm_lab.diffusion import OwnPlan

    d = GaussianDiffusion.from_schedule("linear", 10)
    student = Denoiser(d, x0_eps=lambda x, t: (x, x),
                       own_sampler=lambda: DDIMSampler(d, subsequence={"name": "explicit", "timesteps": [9, 4]}))
    resolved = prepare_sampler(OwnPlan(d), student)
    assert isinstance(resolved, DDIMSampler) and resolved.timesteps == [9, 4] and resolved.nfe == 2
    with pytest.raises(ConfigError, match="sampler=student needs a model with its own sampling plan"):
        prepare_sampler(OwnPlan(d), Denoiser(d, x0_eps=lambda x, t: (x, x)))
