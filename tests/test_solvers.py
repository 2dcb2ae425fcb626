"""diffusers' ODE solvers as samplers (siddm_lab.diffusion.solvers): sampler=dpm_solver, unipc, deis, heun.

Oracles: diffusers' own loop (``set_timesteps``, then ``scale_model_input`` / model / ``step`` over
``scheduler.timesteps``) on the same model, fed the model's ε' as diffusers' pipelines do (prediction_type
"epsilon", equal to float32 round-off: diffusers steps in float32) or its x0' (prediction_type "sample": the same
computation as the wrapper, equal to 1e-12); deterministic DDIM (η = 0) on the same plan for first-order
DPM-Solver++ (the closed-form tie). The model is the exact posterior mean of a 2-D Gaussian mixture, in float64.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from diffusers import (
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from siddm_lab.diffusion import (
    SAMPLERS,
    CosineContinuousTime,
    DDIMSampler,
    DEISSampler,
    Denoiser,
    DPMSolverSampler,
    GaussianDiffusion,
    HeunSampler,
    UniPCSampler,
    check_sampler,
)
from siddm_lab.errors import ConfigError
from tests.conftest import ROOT
from tests.test_sample import gan_ckpt, run_sample, toy_ckpt  # noqa: F401  (fixtures, used by name)

F64 = torch.float64
MU = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-0.5, 1.5]], dtype=F64)
S2 = 0.05


class MixtureDenoiser:
    """The exact (x0', ε') of data ~ Σ_k N(μ_k, s² I) / K under a process: x0' = E[x0 | x_t] (finite at ᾱ = 0),
    ε' = (x_t − sqrt(ᾱ) x0') / sqrt(1 − ᾱ); counts its calls and records the timesteps it is called at."""

    def __init__(self, diffusion):
        self.diffusion = diffusion
        self.calls = 0
        self.seen = []

    def __call__(self, x, t):
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        self.calls += 1
        self.seen.append(int(t[0]))
        ab = self.diffusion.alpha_bar(t).to(x.dtype)[:, None]
        var = ab * S2 + 1 - ab
        diff = x[:, None, :] - ab.sqrt()[:, None] * MU.to(x.dtype)[None]
        w = torch.softmax(-(diff ** 2).sum(-1) / (2 * var), 1)
        x0 = (w[..., None] * (MU.to(x.dtype)[None] + (ab.sqrt() * S2 / var)[:, None] * diff)).sum(1)
        return x0, (x - ab.sqrt() * x0) / (1 - ab).sqrt()


CLASSES = {"dpm_solver": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler,
           "deis": DEISMultistepScheduler, "heun": HeunDiscreteScheduler}


def diffusers_loop(name, diffusion, x_T, steps=None, timesteps=None, feed="eps", start=None, **config):
    """diffusers' textbook loop on ``MixtureDenoiser`` (x = x_T · init_noise_sigma unless ``start`` is given)."""
    model = MixtureDenoiser(diffusion)
    sched = CLASSES[name](num_train_timesteps=diffusion.num_timesteps,
                          trained_betas=diffusion.betas.float().tolist(),
                          prediction_type="epsilon" if feed == "eps" else "sample", **config)
    if timesteps is not None:
        sched.set_timesteps(timesteps=timesteps)
    else:
        sched.set_timesteps(steps)
    x = x_T * (sched.init_noise_sigma if start is None else start(sched))
    for t in sched.timesteps:
        x0, eps = model(sched.scale_model_input(x, t), torch.full((x.shape[0],), int(t), dtype=torch.long))
        x = sched.step(eps if feed == "eps" else x0, t, x).prev_sample
    return x, model


def heun_start(sched):
    """Our start for Heun: x_T · sqrt(1 + σ_(t_0)²), whose model input is x_T (diffusers' pipelines use
    init_noise_sigma = σ_max for linspace/trailing; the same to O(1/σ_max²))."""
    return float((sched.sigmas[0].double() ** 2 + 1).sqrt())


@pytest.fixture(scope="module")
def linear():
    return GaussianDiffusion.from_schedule("linear", 1000)


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=F64)


# (option, sampler settings, diffusers config for the same run)
CASES = [
    ("dpm_solver", {"order": 2}, {"solver_order": 2, "algorithm_type": "dpmsolver++"}),
    ("dpm_solver", {"order": 3, "timestep_spacing": "trailing"},
     {"solver_order": 3, "algorithm_type": "dpmsolver++", "timestep_spacing": "trailing"}),
    ("dpm_solver", {"order": 1, "timestep_spacing": "leading"},
     {"solver_order": 1, "algorithm_type": "dpmsolver++", "timestep_spacing": "leading"}),
    ("dpm_solver", {"order": 3, "final_sigmas_type": "sigma_min", "lower_order_final": False},
     {"solver_order": 3, "algorithm_type": "dpmsolver++", "final_sigmas_type": "sigma_min",
      "lower_order_final": False}),
    ("dpm_solver", {"order": 2, "lambda_min_clipped": -3.0}, {"solver_order": 2, "lambda_min_clipped": -3.0}),
    ("unipc", {"order": 2, "solver_type": "bh2"}, {"solver_order": 2, "solver_type": "bh2"}),
    ("unipc", {"order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min"},
     {"solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    ("unipc", {"order": 1, "timestep_spacing": "trailing"}, {"solver_order": 1, "timestep_spacing": "trailing"}),
    ("deis", {"order": 2}, {"solver_order": 2}),
    ("deis", {"order": 3, "timestep_spacing": "leading"}, {"solver_order": 3, "timestep_spacing": "leading"}),
    ("heun", {"timestep_spacing": "leading"}, {"timestep_spacing": "leading"}),
    ("heun", {"timestep_spacing": "trailing"}, {"timestep_spacing": "trailing"}),
]


@pytest.mark.parametrize("steps", [4, 10])
@pytest.mark.parametrize("option,settings,config", CASES)
def test_each_option_is_diffusers_own_loop(linear, x_T, option, settings, config, steps):
    sampler = SAMPLERS[option](linear, steps=steps, **settings)
    model = MixtureDenoiser(linear)
    ours = sampler.sample(model, x_T)
    start = heun_start if option == "heun" else None  # (leading: init_noise_sigma, rounded in float32)
    # x0' into diffusers: the wrapper's computation
    same, _ = diffusers_loop(option, linear, x_T, steps, feed="x0", start=start, **config)
    torch.testing.assert_close(ours, same, rtol=0, atol=1e-12)
    # ε' into diffusers (its pipelines' input): equal to diffusers' float32 arithmetic
    ref, ref_model = diffusers_loop(option, linear, x_T, steps, feed="eps", start=start, **config)
    assert torch.isfinite(ours).all() and ours.dtype == F64
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-5)
    assert model.seen == ref_model.seen  # the same timesteps, as integers
    assert model.calls == sampler.nfe == ref_model.calls


def test_heun_linspace_rounds_diffusers_fractional_timesteps(x_T):
    """T = 50, S = 7: diffusers' Heun linspace is 49, 40.83, ..., 0 (σ interpolated between integers). The
    sampler runs round(linspace(0, T-1, S)) as custom timesteps, whose σ are those of the integer timesteps."""
    d = GaussianDiffusion.from_schedule("linear", 50)
    probe = HeunDiscreteScheduler(num_train_timesteps=50, trained_betas=d.betas.float().tolist())
    probe.set_timesteps(7)
    assert float(probe.timesteps[1]) == pytest.approx(40.8333, abs=1e-3)
    sampler = HeunSampler(d, steps=7)
    assert sampler.timesteps == [49, 41, 33, 24, 16, 8, 0] and sampler.settings()["timesteps_rounded"] is True
    assert sampler.nfe == 13 and sampler.call_timesteps == [49, 41, 41, 33, 33, 24, 24, 16, 16, 8, 8, 0, 0]
    model = MixtureDenoiser(d)
    ours = sampler.sample(model, x_T)
    ref, ref_model = diffusers_loop("heun", d, x_T, timesteps=sampler.timesteps, start=heun_start)
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-5)
    assert model.seen == ref_model.seen and model.calls == 13
    # where linspace is integral (S - 1 divides T - 1) it is diffusers' own plan, not rounded
    exact = HeunSampler(d, steps=8)
    assert exact.timesteps == [49, 42, 35, 28, 21, 14, 7, 0] and not exact.timesteps_rounded
    ref, _ = diffusers_loop("heun", d, x_T, 8, start=heun_start)
    torch.testing.assert_close(exact.sample(MixtureDenoiser(d), x_T), ref, rtol=0, atol=2e-5)


def test_heun_clip_x0_is_diffusers_clip_sample(linear, x_T):
    ours = HeunSampler(linear, steps=6, timestep_spacing="leading", clip_x0=0.8).sample(MixtureDenoiser(linear),
                                                                                         3 * x_T)
    ref, _ = diffusers_loop("heun", linear, 3 * x_T, 6, timestep_spacing="leading", clip_sample=True,
                            clip_sample_range=0.8)
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-5)
    unclipped = HeunSampler(linear, steps=6, timestep_spacing="leading").sample(MixtureDenoiser(linear), 3 * x_T)
    assert ours.abs().max() <= 0.8 + 1e-12 < unclipped.abs().max()


@pytest.mark.parametrize("plan", [{"name": "uniform"}, {"name": "explicit", "timesteps": [999, 700, 420, 90, 0]},
                                  {"name": "trailing"}])
def test_first_order_dpm_solver_is_ddim_eta0_on_the_same_plan(linear, x_T, plan):
    steps = None if plan["name"] == "explicit" else 10
    dpm = DPMSolverSampler(linear, steps=steps, order=1, timestep_spacing=None, subsequence=plan)
    ddim = DDIMSampler(linear, eta=0.0, steps=steps, subsequence=plan)
    assert dpm.timesteps == ddim.timesteps and dpm.settings()["subsequence"] == ddim.subsequence
    model = MixtureDenoiser(linear)
    # float32 schedule in diffusers against float64 in DDIM
    torch.testing.assert_close(dpm.sample(model, x_T), ddim.sample(model, x_T), rtol=0, atol=2e-5)
    # diffusers' own spacing: DDIM given that plan explicitly
    spaced = DPMSolverSampler(linear, steps=10, order=1)
    same = DDIMSampler(linear, steps=None, subsequence={"name": "explicit", "timesteps": spaced.timesteps})
    torch.testing.assert_close(spaced.sample(model, x_T), same.sample(model, x_T), rtol=0, atol=2e-5)


@pytest.mark.parametrize("option,settings,nfe", [
    ("dpm_solver", {"steps": 1}, 1), ("dpm_solver", {"steps": 7, "order": 3}, 7),
    ("unipc", {"steps": 5}, 5), ("unipc", {"steps": 12, "order": 3}, 12),
    ("deis", {"steps": 3}, 3), ("deis", {"steps": 9, "order": 3}, 9),
    ("heun", {"steps": 1, "timestep_spacing": "trailing"}, 1), ("heun", {"steps": 2}, 3),
    ("heun", {"steps": 10}, 19), ("heun", {"steps": 4, "timestep_spacing": None}, 7),
])
def test_nfe_counts_every_network_call(linear, x_T, option, settings, nfe):
    sampler = SAMPLERS[option](linear, **settings)
    model = MixtureDenoiser(linear)
    x = sampler.sample(model, x_T[:16])
    assert model.calls == sampler.nfe == nfe == sampler.settings()["nfe"] == sampler.settings()["depth"]
    assert torch.isfinite(x).all()
    assert sampler.settings()["steps"] == len(sampler.timesteps) == settings["steps"]


@pytest.mark.parametrize("option", ["dpm_solver", "unipc", "deis", "heun"])
def test_a_fresh_scheduler_per_call_and_per_batch(linear, x_T, option):
    """diffusers' schedulers keep the solver's history: the same call twice, and a batch split in two, give the
    same samples (nothing carried over); ``rng`` is not drawn from."""
    sampler = SAMPLERS[option](linear, steps=6)
    model = MixtureDenoiser(linear)
    a = sampler.sample(model, x_T)
    b = sampler.sample(model, x_T, rng=torch.Generator().manual_seed(1))
    halves = torch.cat([sampler.sample(model, x_T[:100]), sampler.sample(model, x_T[100:])])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, halves, rtol=0, atol=1e-12)


def test_the_options_are_registered_by_name():
    assert [SAMPLERS[n] for n in ("dpm_solver", "unipc", "deis", "heun")] == \
        [DPMSolverSampler, UniPCSampler, DEISSampler, HeunSampler]
    assert all(cls.requires >= {"x0_eps", "discrete_time", "deterministic", "gaussian_noise"} and not cls.stochastic
               for cls in (DPMSolverSampler, UniPCSampler, DEISSampler, HeunSampler))


def test_settings_record_the_plan_that_ran(linear):
    s = DPMSolverSampler(linear, steps=5, order=3, timestep_spacing="leading").settings()
    assert s["timesteps"] == [830, 664, 498, 332, 166]  # 1000 // 6 = 166 apart, diffusers' leading (no 0)
    assert (s["sampler"], s["scheduler"], s["steps"], s["nfe"], s["depth"], s["order"]) == \
        ("dpm_solver", "DPMSolverMultistepScheduler", 5, 5, 5, 3)
    assert (s["timestep_spacing"], s["subsequence"], s["model_input"], s["final_sigmas_type"]) == \
        ("leading", None, "x0", "zero")
    u = UniPCSampler(linear, steps=4).settings()
    assert u["timesteps"] == [999, 749, 500, 250] and u["solver_type"] == "bh2"
    own = DPMSolverSampler(linear, steps=None, timestep_spacing=None,
                           subsequence={"name": "explicit", "timesteps": [999, 500, 3]}).settings()
    assert (own["subsequence"], own["timesteps"], own["steps"], own["timestep_spacing"]) == \
        ("explicit", [999, 500, 3], 3, None)
    assert json.loads(json.dumps(own)) == own  # fit for metrics.json


@pytest.mark.parametrize("option", ["dpm_solver", "unipc"])
def test_zero_terminal_snr_starts_from_a_finite_lambda(x_T, option):
    d = GaussianDiffusion.from_schedule("linear", 1000, zero_terminal_snr=True)
    assert float(d.alphas_cumprod[-1]) == 0.0
    sampler = SAMPLERS[option](d, steps=10)
    model = MixtureDenoiser(d)
    x = sampler.sample(model, x_T)
    assert model.seen[0] == 999 and sampler.settings()["zero_terminal_snr"] is True
    assert torch.isfinite(x).all()
    # the mixture's modes are reached (the first step used the model's x0' at ᾱ = 0)
    assert (x[:, None] - MU[None]).norm(dim=-1).min(1).values.median() < 0.3
    ref, _ = diffusers_loop(option, d, x_T, 10, feed="x0", rescale_betas_zero_snr=True)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("option", ["deis", "heun"])
def test_zero_terminal_snr_is_refused_without_diffusers_rescaling(option):
    d = GaussianDiffusion.from_schedule("linear", 100, zero_terminal_snr=True)
    with pytest.raises(ConfigError, match=rf"sampler={option} cannot sample a process with zero terminal SNR.*"
                                          r"sampler=dpm_solver or sampler=unipc"):
        SAMPLERS[option](d, steps=10)


def test_cosine_schedule_samples(x_T):
    d = GaussianDiffusion.from_schedule("cosine", 1000)
    for option in ("dpm_solver", "unipc", "deis", "heun"):
        assert torch.isfinite(SAMPLERS[option](d, steps=8).sample(MixtureDenoiser(d), x_T)).all(), option
    clipped = DPMSolverSampler(d, steps=8, lambda_min_clipped=-5.1)
    assert clipped.timesteps[0] < 999 and float(d.alphas_cumprod[clipped.timesteps[0]]) > 3e-5


@pytest.mark.parametrize("option", ["dpm_solver", "unipc", "deis", "heun"])
def test_models_that_the_solvers_do_not_fit_are_refused(option):
    cls = SAMPLERS[option]
    gamma = GaussianDiffusion.from_schedule("linear", 100, noise={"name": "gamma", "theta0": 0.01})
    with pytest.raises(ConfigError, match=rf"^sampler={option} needs Gaussian noise \(its process has gamma noise\)"):
        check_sampler(cls(gamma, steps=5), Denoiser(gamma, x0_eps=lambda x, t: (x, x)))
    d = GaussianDiffusion.from_schedule("linear", 100)
    gan = Denoiser(d, x0_eps=lambda x, t: (x, x), x0=lambda x, t: x, deterministic=False,
                   description="this diffusion GAN")
    with pytest.raises(ConfigError, match=rf"^sampler={option} needs a deterministic denoiser.*this diffusion GAN"):
        check_sampler(cls(d, steps=5), gan)
    with pytest.raises(ConfigError, match=rf"^sampler={option} needs a deterministic denoiser"):
        cls(d, steps=5).sample(gan, torch.zeros(2, 2))
    continuous = CosineContinuousTime(4)
    siddm = Denoiser(continuous, x0=lambda x, t: x, deterministic=False, description="this SIDDM")
    with pytest.raises(ConfigError, match=rf"^sampler={option} needs .*a discrete-time process.*this SIDDM"):
        check_sampler(cls, siddm)  # the class first, as a model does before building the sampler
    with pytest.raises(ConfigError, match=rf"^sampler={option} needs a discrete-time process"):
        cls(continuous, steps=2)


@pytest.mark.parametrize("option,settings,message", [
    ("dpm_solver", {"order": 4}, r"sampler.order=4 is invalid: expected 1, 2 or 3"),
    ("unipc", {"order": "2"}, r"sampler.order='2' is invalid: expected 1, 2 or 3"),
    ("deis", {"order": 2.0}, r"sampler.order=2.0 is invalid: expected 1, 2 or 3"),
    ("unipc", {"solver_type": "bh3"}, r"sampler.solver_type='bh3' is invalid: expected bh1, bh2"),
    ("dpm_solver", {"timestep_spacing": "uniform"}, r"sampler.timestep_spacing='uniform' is invalid: expected one "
                                                    r"of linspace, leading, trailing \(diffusers' spacings\), or null"),
    ("deis", {"timestep_spacing": "quadratic"}, r"expected one of linspace, leading, trailing \(diffusers' "
                                                r"spacings\)$"),
    ("dpm_solver", {"final_sigmas_type": "one"}, r"sampler.final_sigmas_type='one' is invalid: expected zero, "
                                                 r"sigma_min"),
    ("deis", {"lower_order_final": "yes"}, r"sampler.lower_order_final='yes' is invalid: expected true or false"),
    ("heun", {"clip_x0": -1.0}, r"sampler.clip_x0=-1.0 is invalid: expected null or a positive number"),
    ("dpm_solver", {"lambda_min_clipped": float("-inf")}, r"sampler.lambda_min_clipped=-inf is invalid"),
    ("dpm_solver", {"lambda_min_clipped": -5.1, "timestep_spacing": None}, r"acts on diffusers' spacings only"),
    ("unipc", {"steps": 0}, r"sampler.steps=0 is invalid: expected a positive integer"),
    ("deis", {"steps": None}, r"sampler.steps=None is invalid: expected a positive integer \(diffusers' "
                              r"num_inference_steps\)"),
    ("heun", {"steps": 1001}, r"sampler.steps=1001 is larger than the schedule \(T=1000\)"),
    ("unipc", {"solver_type": "bh1"}, r"bh1 with sampler.final_sigmas_type=zero gives NaN samples.*"
                                      r"final_sigmas_type=sigma_min or sampler.solver_type=bh2"),
    ("unipc", {"order": 3, "lower_order_final": False}, r"lower_order_final=false with "
                                                        r"sampler.final_sigmas_type=zero and sampler.order=3"),
    ("unipc", {"timestep_spacing": None}, r"timestep_spacing=null .* not available for sampler=unipc: diffusers' "
                                          r"UniPCMultistepScheduler takes no custom timesteps"),
    ("deis", {"subsequence": {"name": "explicit", "timesteps": [999, 0]}},
     r"plans with diffusers' spacing, so subsequence=explicit would be ignored: diffusers' DEISMultistepScheduler "
     r"takes no custom timesteps"),
    ("dpm_solver", {"subsequence": {"name": "quadratic"}}, r"subsequence=quadratic would be ignored: set "
                                                           r"sampler.timestep_spacing=null"),
    ("dpm_solver", {"steps": 61, "timestep_spacing": "trailing"},
     r"gives diffusers' plan \[.*, 15, -1\] \(62 timesteps\) for T=1000, which is not a strictly decreasing plan.*"
     r"S\+1 timesteps ending at -1.*subsequence=trailing, which keeps the first S"),
    ("unipc", {"steps": 1000, "timestep_spacing": "leading"}, r"not a strictly decreasing plan in 0..999"),
    ("heun", {"steps": 1}, r"the single step t=0, which skips the whole reverse process"),
    ("heun", {"steps": None, "timestep_spacing": None,
              "subsequence": {"name": "explicit", "timesteps": [999, 10, 10], "keep_duplicates": True}},
     r"needs distinct timesteps"),
])
def test_bad_settings_are_refused_by_key(linear, option, settings, message):
    settings = {"steps": 10, **settings}
    with pytest.raises(ConfigError, match=message):
        SAMPLERS[option](linear, **settings)


def test_trailing_through_the_subsequence_group_runs_where_diffusers_spacing_is_refused(linear):
    s = DPMSolverSampler(linear, steps=61, timestep_spacing=None, subsequence={"name": "trailing"})
    assert len(s.timesteps) == 61 and s.timesteps[0] == 999 and s.timesteps[-1] >= 0


def test_importing_the_package_does_not_import_diffusers():
    code = "import sys, siddm_lab.diffusion; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


@pytest.mark.parametrize("overrides,nfe", [
    (["sampler=dpm_solver", "sampler.steps=8"], 8),
    (["sampler=dpm_solver", "sampler.order=3", "sampler.timestep_spacing=null",
      "subsequence=explicit", "subsequence.timesteps=[49,30,20,10,4,0]", "sampler.steps=null"], 6),
    (["sampler=unipc", "sampler.steps=7", "sampler.solver_type=bh1", "sampler.final_sigmas_type=sigma_min"], 7),
    (["sampler=deis", "sampler.steps=5"], 5),
    (["sampler=heun", "sampler.steps=6"], 11),
])
def test_siddm_sample_writes_the_solver_and_its_nfe(toy_ckpt, tmp_path, overrides, nfe):  # noqa: F811
    common = [f"ckpt={toy_ckpt}", "num_samples=64", "batch_size=32"]
    info = run_sample(common + overrides, tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    name = overrides[0].split("=")[1]
    assert saved["sampler"] == name == info["sampler"] and saved["nfe"] == nfe == info["nfe"]
    assert len(saved["timesteps"]) == saved["steps"] and "fd_2d" in saved
    import numpy as np

    x = np.load(tmp_path / "a" / "samples.npz")["samples"]
    assert x.shape == (64, 2) and np.isfinite(x).all()
    run_sample(common + overrides, tmp_path / "b")  # the seed reproduces the samples
    np.testing.assert_array_equal(x, np.load(tmp_path / "b" / "samples.npz")["samples"])


@pytest.mark.parametrize("option", ["dpm_solver", "heun"])
def test_siddm_sample_refuses_a_diffusion_gan(gan_ckpt, tmp_path, option):  # noqa: F811
    """The class is checked against the model before its settings (steps=20 > T=4 would be the other error)."""
    with pytest.raises(ConfigError, match=rf"^sampler={option} needs a deterministic denoiser.*Samplers that fit "
                                          r"it: .*generator"):
        run_sample([f"ckpt={gan_ckpt}", f"sampler={option}", "num_samples=8"], tmp_path)


def test_heun_on_karras_levels_is_diffusers_heun_and_converges_to_the_ode(linear, x_T):
    """EDM's Heun on its own σ spacing (``timestep_spacing=null subsequence=karras``) is diffusers' Heun loop on that
    integer plan, and nears the ODE's solution (DPM-Solver++ 3M at 200 steps, exact mixture denoiser) as S grows.
    (On this 2-D mixture the Karras levels are not more accurate than linspace at equal S: they spend the steps
    at small σ, while the mixture's modes are decided at σ of the modes' spacing.)"""
    karras = HeunSampler(linear, steps=4, timestep_spacing=None, subsequence={"name": "karras", "rho": 7.0})
    assert karras.timesteps == [999, 775, 301, 0] and karras.settings()["subsequence"] == "karras"
    assert karras.nfe == 7
    ours = karras.sample(MixtureDenoiser(linear), x_T)
    ref, _ = diffusers_loop("heun", linear, x_T, timesteps=karras.timesteps, start=heun_start)
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-5)
    ode = DPMSolverSampler(linear, steps=200, order=3).sample(MixtureDenoiser(linear), x_T)
    err = [float((HeunSampler(linear, steps=S, timestep_spacing=None, subsequence={"name": "karras"})
                  .sample(MixtureDenoiser(linear), x_T) - ode).pow(2).sum(1).sqrt().mean()) for S in (4, 8, 20)]
    assert err[0] > 2 * err[1] > 4 * err[2]
