"""Every config-group option composes and instantiates; invalid values fail at start, by name."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import MissingConfigException
from hydra.utils import instantiate

from siddm_lab.config import validate
from siddm_lab.diffusion import CosineContinuousTime, GaussianDiffusion
from siddm_lab.errors import ConfigError
from siddm_lab.training import check_samplers, preflight
from tests.conftest import CONF_DIR
from tests.helpers import compose_cfg


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in ("model", "dataset", "net", "schedule", "trainer", "logger", "callbacks", "paths",
                  "experiment", "hydra", "sampler", "subsequence", "ablation", "discriminator", "objective"):
        assert options(group), group


def test_only_experiments_set_several_groups():
    """One axis per group: an option that writes at the top level (``@package _global_``: it sets keys or
    groups of other axes) is an experiment, or the row of a table experiment (conf/experiment/<table>/)."""
    bundles = [str(p.relative_to(CONF_DIR)) for p in sorted(CONF_DIR.rglob("*.yaml"))
               if p.read_text().startswith("# @package _global_") and p.relative_to(CONF_DIR).parts[0] != "experiment"]
    assert bundles == []


@pytest.mark.parametrize("schedule", options("schedule"))
def test_schedule_options_instantiate(schedule):
    steps = 4 if schedule.startswith("ddgan") or schedule.endswith("continuous") else 1000
    cfg = compose_cfg([f"schedule={schedule}", f"diffusion.steps={steps}"])
    validate(cfg)
    diffusion = instantiate(cfg.schedule)
    if schedule == "cosine_continuous":
        assert isinstance(diffusion, CosineContinuousTime) and diffusion.num_timesteps == steps
        ab = diffusion.alpha_bar(torch.linspace(0, 1, 11))
        assert torch.all(ab[1:] < ab[:-1]) and float(ab[-1]) == pytest.approx(0.0, abs=1e-12)
        return
    assert isinstance(diffusion, GaussianDiffusion)
    assert diffusion.num_timesteps == steps
    ab = diffusion.alphas_cumprod
    assert torch.all(ab[1:] < ab[:-1])  # noise increases monotonically
    if "zsnr" in schedule:
        assert float(ab[-1]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("module", ["train_step", "train_siddm", "toy_table_throughput"])
def test_bench_composes_configs_without_the_tests_package(module, tmp_path):
    """The benchmarks build their configs with siddm_lab.config.compose (the package's own compose API),
    so they run where the tests are not installed."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (f"import sys; sys.modules['tests'] = None; sys.argv = ['x']; import runpy; "
            f"g = runpy.run_path('bench/{module}.py', run_name='bench'); "
            f"from siddm_lab.config import compose; "
            f"cfg = compose(['experiment=siddm_toy'], output_dir={str(tmp_path)!r}); "
            f"assert cfg.paths.output_dir == {str(tmp_path)!r} and cfg.model._target_.endswith('SIDDM')")
    if module == "toy_table_throughput":  # it composes inside a function
        code += "; m, x = g['build_cell'](g['DEFAULT_CELL'], ['net.hidden=8'], [0]); assert x.shape[-1] == 2"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_schedule_options_are_distinct_schedules():
    """No two schedule options give the same betas (a sweep over the group would train one schedule twice)."""
    betas = {}
    for schedule in options("schedule"):
        steps = 4 if schedule.startswith("ddgan") or schedule.endswith("continuous") else 1000
        cfg = compose_cfg([f"schedule={schedule}", f"diffusion.steps={steps}"])
        diffusion = instantiate(cfg.schedule)
        if isinstance(diffusion, GaussianDiffusion):
            betas[schedule] = diffusion.betas
    same = [(a, b) for a in betas for b in betas if a < b and torch.equal(betas[a], betas[b])]
    assert same == []


TOY = [d for d in options("dataset") if d in ("gaussians25", "gaussians25_siddm", "gaussians25_released", "ring8",
                                             "swissroll")]
IMAGES = {"mnist": "unet_mnist", "digits": "unet_small", "cifar10": "unet_cifar10", "image_folder": "unet_small",
          "celebahq256": "unet_small", "imagenet64": "unet_small"}


def test_dataset_options_are_all_covered():
    assert set(options("dataset")) == set(TOY) | set(IMAGES)


@pytest.mark.parametrize("dataset", TOY)
def test_toy_datasets_with_mlp(dataset):
    cfg = compose_cfg([f"dataset={dataset}", "net=mlp"])
    validate(cfg)
    dm = instantiate(cfg.dataset)
    model = instantiate(cfg.model)
    x = torch.randn(3, *dm.data_shape)
    assert model.net(x, torch.tensor([0, 1, 2])).shape == x.shape


@pytest.mark.parametrize("dataset,net", sorted(IMAGES.items()))
def test_image_datasets_with_their_unet(dataset, net):
    overrides = [f"dataset={dataset}", f"net={net}"]
    if dataset in ("image_folder", "celebahq256", "imagenet64"):
        # unet_small is made for 8x8 digits: its attention resolution [4] is no level of a 16x16 UNet
        overrides += ["dataset.image_size=16", "net.attn_resolutions=[8]"]
    cfg = compose_cfg(overrides)
    validate(cfg)
    dm = instantiate(cfg.dataset)  # constructing reads nothing yet
    net_ = instantiate(cfg.net)
    c, s = cfg.dataset.channels, cfg.dataset.image_size
    x = torch.randn(2, c, s, s)
    with torch.no_grad():
        assert net_(x, torch.tensor([0, 999])).shape == x.shape
    assert dm.batch_size == cfg.dataset.batch_size


@pytest.mark.parametrize("option", options("net"))
def test_every_net_option_builds(option):
    dataset = {"mlp": "gaussians25", "mlp_gen": "gaussians25", "mlp_gen_skip": "gaussians25",
               "unet_small": "digits", "unet_mnist": "mnist",
               "unet_gen": "mnist", "unet_cifar10": "cifar10", "unet_gen_cifar10": "cifar10",
               "unet_gen_64": "imagenet64", "unet_gen_256": "celebahq256",
               "ncsnpp_gen": "cifar10", "ncsnpp_gen_256": "celebahq256"}[option]
    model = ("siddm_released" if option.endswith("skip") else "siddm") if "_gen" in option else "ddpm"
    cfg = compose_cfg([f"dataset={dataset}", f"net={option}", f"model={model}"])
    assert sum(p.numel() for p in instantiate(cfg.net).parameters()) > 0


def test_ddpm_cifar10_unet_has_the_papers_size():
    cfg = compose_cfg(["dataset=cifar10", "net=unet_cifar10"])
    n = sum(p.numel() for p in instantiate(cfg.net).parameters())
    assert 34e6 < n < 37.5e6  # DDPM paper: 35.7M


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options(option, tmp_path):
    cfg = compose_cfg([f"trainer={option}"], output_dir=tmp_path)
    assert cfg.trainer._target_.endswith("Trainer")
    if option not in ("gpu", "ddp") or torch.cuda.is_available():
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.max_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options(option, tmp_path):
    from siddm_lab.utils.loggers import build_loggers

    cfg = compose_cfg([f"logger={option}"], output_dir=tmp_path)
    try:
        loggers = build_loggers(cfg)
        if option == "none":
            assert loggers is False
        else:
            assert len(loggers) == 1
    finally:
        if option == "wandb":  # the resolved config was logged: a run is open
            import wandb

            wandb.finish()


@pytest.mark.parametrize("option", options("callbacks"))
def test_callback_options(option, tmp_path):
    from siddm_lab.utils.loggers import build_callbacks

    cfg = compose_cfg([f"callbacks={option}"], output_dir=tmp_path)
    cbs = build_callbacks(cfg)
    names = {type(c).__name__ for c in cbs}
    if option == "default":
        assert {"PeriodicCheckpoint", "EMA", "ExceptionCheckpoint"} <= names
    else:
        assert cbs == []


def _entry(option: str) -> str:
    """Experiments documented as siddm-sample / siddm-distill sweeps compose with sample.yaml / distill.yaml;
    the others with train.yaml."""
    text = (CONF_DIR / "experiment" / f"{option}.yaml").read_text()
    return "sample" if "siddm-sample -m" in text else "distill" if "siddm-distill " in text else "train"


@pytest.mark.parametrize("option", options("experiment"))
def test_experiment_options_compose_and_validate(option):
    entry = _entry(option)
    if entry == "train":
        cfg = compose_cfg([f"experiment={option}"])
    elif entry == "sample":
        cfg = compose_sample([f"experiment={option}", "ckpt=x.ckpt"])
    else:
        from siddm_lab.config import compose

        cfg = compose([f"experiment={option}", "teacher=x.ckpt"], "distill")
    validate(cfg)
    assert cfg.task_name == option


def compose_sample(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("sample", overrides=overrides, return_hydra_config=True)


def test_ddim_table1_sweep_is_the_papers_grid():
    cfg = compose_sample(["experiment=ddim_table1", "ckpt=x.ckpt"])
    params = cfg.hydra.sweeper.params
    assert params["sampler.steps"] == "10,20,50,100,1000"
    assert params["sampler.eta"] == "0.0,0.2,0.5,1.0,sigma_hat"


def test_deq_inversion_table_sweeps_s_and_method_with_the_deq_decoder():
    """Baseline vs DEQ at S in {10, 100}: every job inverts with the DEQ sampler's plan (backprop uses the plan
    only), the public code's solver settings, and the same images and Adam settings."""
    from siddm_lab.diffusion import DEQSampler, GaussianDiffusion

    cfg = compose_sample(["experiment=deq_inversion_table", "ckpt=x.ckpt"])
    validate(cfg)
    params = cfg.hydra.sweeper.params
    assert params["sampler.steps"] == "10,100" and params["invert.method"] == "backprop,phantom"
    assert cfg.mode == "invert" and cfg.invert.num >= 10
    sampler = instantiate(cfg.sampler)(diffusion=GaussianDiffusion.from_schedule("linear", 1000))
    assert isinstance(sampler, DEQSampler) and (sampler.m, sampler.damping, sampler.max_iter) == (3, 0.9, 15)


@pytest.mark.parametrize("row,name,steps", [("last100", "last_k", None), ("exponential", "exponential", None),
                                            ("first100last100", "first_k_last_k", None),
                                            ("quadratic10", "quadratic", 10), ("quadratic100", "quadratic", 100)])
def test_subsampling_rows(row, name, steps):
    cfg = compose_sample(["experiment=subsampling_table", "ckpt=x.ckpt", f"+experiment/subsampling_table={row}"])
    validate(cfg)
    assert cfg.subsequence.name == name and cfg.sampler.steps == steps


@pytest.mark.parametrize("option", options("sampler"))
def test_sampler_options(option):
    """Every sampler option instantiates to a sampler object bound to a process (gamma_ddim: a Gamma-noise
    process; student: resolved against a model with its own plan, and refused for one without)."""
    from siddm_lab.diffusion import SAMPLERS, DDIMSampler, Denoiser, GaussianDiffusion, prepare_sampler
    from siddm_lab.errors import ConfigError

    cfg = compose_sample([f"sampler={option}", "ckpt=x.ckpt"])
    validate(cfg)
    noise = {"name": "gamma", "theta0": 0.01} if option == "gamma_ddim" else None
    d = GaussianDiffusion.from_schedule("linear", 100, noise=noise)
    sampler = instantiate(cfg.sampler)(diffusion=d)
    assert SAMPLERS[option] is type(sampler)  # the option's name is the sampler's
    if option == "student":
        with pytest.raises(ConfigError, match="sampler=student needs a model with its own sampling plan"):
            prepare_sampler(sampler, Denoiser(d, x0_eps=lambda x, t: (x, x)))
        sampler = prepare_sampler(sampler, Denoiser(d, x0_eps=lambda x, t: (x, x),
                                                    own_sampler=lambda: DDIMSampler(d, steps=4)))
    assert sampler.nfe >= 1 and sampler.settings()["sampler"] == sampler.name


@pytest.mark.parametrize("option", options("subsequence"))
def test_subsequence_options(option):
    """Every sub-sequence option gives a decreasing plan in 0..T-1 through the sampler; a spacing takes
    S = sampler.steps, the fixed sequences their own length (sampler.steps=null)."""
    from siddm_lab.diffusion.subsequences import SPACINGS

    steps = 10 if option in SPACINGS else "null"
    cfg = compose_sample([f"subsequence={option}", "ckpt=x.ckpt", f"sampler.steps={steps}"])
    validate(cfg)
    d = GaussianDiffusion.from_schedule("linear", 1000)
    ts = instantiate(cfg.sampler)(diffusion=d).timesteps
    assert ts == sorted(ts, reverse=True) and 0 <= ts[-1] and ts[0] < 1000
    if option in SPACINGS:
        assert len(ts) <= 11


@pytest.mark.parametrize("override,expected", [
    ("sampler.eta=-1", "sampler.eta=-1 is invalid: expected a finite number >= 0 or 'sigma_hat'"),
    ("sampler.eta=abc", "sampler.eta='abc' is invalid: expected a finite number >= 0 or 'sigma_hat'"),
    ("sampler.clip_x0=0", "sampler.clip_x0=0 is invalid: expected null or a positive number"),
    ("sampler.steps=0", "sampler.steps=0 is invalid: expected null or a positive integer"),
    ("sampler.steps=1001", "sampler.steps=1001 is larger than the schedule (T=1000); allowed: 1..1000"),
    ("subsequence.name=nope", "subsequence.name='nope' is unknown; allowed: full, uniform"),
])
def test_bad_sampler_values_name_the_key(override, expected):
    """The sampler checks its own settings when it is built for a process (siddm-sample: the checkpoint's, before
    the output folder is accepted); siddm-sample's own keys are the config's."""
    cfg = compose_sample(["ckpt=x.ckpt", override])
    validate(cfg)  # no rule of the config: the sampler's own
    with pytest.raises(ConfigError) as e:
        instantiate(cfg.sampler)(diffusion=GaussianDiffusion.from_schedule("linear", 1000))
    assert str(e.value).startswith(expected), str(e.value)
    with pytest.raises(ConfigError, match=r"^num_samples=0 is invalid: expected a positive integer"):
        validate(compose_sample(["ckpt=x.ckpt", "num_samples=0"]))


def test_unknown_group_option_lists_allowed():
    with pytest.raises(MissingConfigException) as e:
        compose_cfg(["schedule=nope"])
    assert "schedule/nope" in str(e.value)
    assert "linear" in str(e.value)  # Hydra lists the available options


GAN = ["model=siddm", "net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4"]


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["diffusion.steps=-1"], "diffusion.steps"),
        (["diffusion.steps=abc"], "diffusion.steps"),
        (["diffusion.steps=0"], "diffusion.steps"),
        (["schedule=cosine_continuous", *GAN[:2], "diffusion.steps=0"], "diffusion.steps"),
        (["model.prediction_type=score"], "model.prediction_type"),
        ([*GAN, "ablation.lambda_afd=inf"], "ablation.lambda_afd"),
        ([*GAN, "ablation.lambda_disc_reg=inf"], "ablation.lambda_disc_reg"),
        ([*GAN, "ablation.afd_form=nope"], "ablation.afd_form"),
        ([*GAN, "model.objective.lambda_disc_reg=-1"], "model.objective.lambda_disc_reg"),
        ([*GAN, "model.z_dist=cauchy"], "model.z_dist"),
        ([*GAN, "model.nz=0"], "model.nz"),
        (["sampler.variance_type=learned"], "sampler.variance_type"),
        (["sampler=ddim", "sampler.eta=inf"], "sampler.eta"),
        (["sampler.clip_x0=-1"], "sampler.clip_x0"),
        (["sampler=ddim", "subsequence.name=nope"], "subsequence.name"),
        (["dataset.batch_size=0"], "dataset.batch_size"),
        (["dataset.batch_size=1.5"], "dataset.batch_size"),
        (["dataset.num_workers=-1"], "dataset.num_workers"),
        (["trainer.max_steps=-5"], "trainer.max_steps"),
        (["model.optimizer.lr=-1"], "model.optimizer.lr"),
        (["eval.num_samples=1"], "eval.num_samples"),
        (["sampler.steps=1001"], "sampler.steps"),
        (["sampler.steps=0"], "sampler.steps"),
        (["schedule.name=nope"], "schedule.name"),
        (["schedule.beta_start=2"], "schedule.beta_start"),
        (["schedule.beta_end=abc"], "schedule.beta_end"),
        (["seeds=[1,1]"], "seeds"),
        (["seed=-3"], "seed"),
    ],
)
def test_invalid_values_name_the_key(overrides, key):
    """Refused before any work (``preflight``: the config's own rules, then the objects built from it, each
    checking its arguments), naming the key set, the value and what is allowed."""
    cfg = compose_cfg(overrides)
    with pytest.raises(ConfigError) as e:
        preflight(cfg)
    msg = str(e.value)
    assert msg.startswith(key + "="), msg
    assert "expected" in msg or "allowed" in msg, msg


def test_eval_steps_larger_than_schedule_message():
    cfg = compose_cfg(["sampler.steps=5000"])
    with pytest.raises(ConfigError, match=r"sampler.steps=5000 is larger than the schedule.*1\.\.1000"):
        check_samplers(cfg)


def test_a_continuous_time_gan_samples_with_more_steps_than_its_t():
    """The sampler decides which step counts a process allows: a continuous-time diffusion GAN samples with any
    K (the generator chain), so sampler.steps > diffusion.steps is no config error there."""
    cfg = compose_cfg(["experiment=siddm_toy_released", "sampler.steps=8", "eval.steps=null"])
    preflight(cfg)
    with pytest.raises(ConfigError, match=r"sampler.steps=8: a discrete-time diffusion GAN samples with its T=4"):
        preflight(compose_cfg([*GAN, "sampler.steps=8"]))


def test_a_value_given_to_another_key_is_named_as_set():
    """An object names its own argument; the config gives it the value of another key by interpolation (the
    objective's lambda_afd is ablation.lambda_afd unless set itself): the message names the key that was set."""
    from siddm_lab.config import named_as_set

    cfg = compose_cfg(GAN)
    error = ConfigError("model.objective.lambda_afd=-1 is invalid: expected a finite number >= 0")
    assert str(named_as_set(cfg, error)) == ("ablation.lambda_afd=-1 is invalid: expected a finite number >= 0 "
                                             "(given to model.objective.lambda_afd)")
    set_directly = compose_cfg([*GAN, "model.objective.lambda_afd=-1"])
    assert named_as_set(set_directly, error) is error
    other = ConfigError("net.image_size=8 is not divisible by 2**(len(net.channel_mult)-1)=16")
    assert named_as_set(compose_cfg(["dataset=digits", "net=unet_small"]), other) is other  # not one value's


@pytest.mark.parametrize("option", options("model"))
def test_model_options_instantiate(option):
    gan = option.startswith(("siddm", "ddgan", "gan"))
    overrides = [f"model={option}"] + (["net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4"] if gan else [])
    if option == "siddm_released":
        overrides = ["experiment=siddm_toy_released"]
    if option == "gan":  # the shared base: it names no objective of its own
        with pytest.raises(Exception, match="objective"):
            instantiate(compose_cfg(overrides).model)
        return
    cfg = compose_cfg(overrides)
    validate(cfg)
    model = instantiate(cfg.model)
    assert type(model).__name__ == {"ddpm": "DDPM", "ddim": "DDIM", "ddpm_gan": "DDPM"}.get(option, "SIDDM")
    assert (model.discriminator is not None) == (gan or option == "ddpm_gan")
    if gan:
        objective = {"ddgan": "DDGANLoss", "ddgan_image": "DDGANLoss", "siddm_released": "SIDDMReleasedLoss"}
        assert type(model.objective).__name__ == objective.get(option, "SIDDMLoss")


@pytest.mark.parametrize("option", options("ablation"))
def test_ablation_options(option):
    cfg = compose_cfg(["model=siddm", "net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4", f"ablation={option}"])
    objective = instantiate(cfg.model).objective
    abl = cfg.ablation
    assert objective.lambda_afd == abl.lambda_afd and objective.afd_form == abl.afd_form
    assert objective.uses_entropy == (abl.entropy and abl.lambda_afd > 0)
    assert objective.uses_disc_reg == abl.disc_reg and objective.adversarial == float(abl.adversarial)


@pytest.mark.parametrize("table,row", [(t, r) for t in ("siddm_toy", "siddm_toy_released", "table_cifar10_main",
                                                                   "siddm_mnist_table")
                                       for r in options(f"experiment/{t}")])
def test_table_rows_compose(table, row):
    """The rows of the training tables whose rows differ in more than one group (conf/experiment/<table>/)."""
    cfg = compose_cfg([f"experiment={table}", f"+experiment/{table}={row}"])
    validate(cfg)
    model = instantiate(cfg.model)
    loss = type(model.objective).__name__
    if table == "table_cifar10_main" and row == "ddpm_image":
        assert cfg.diffusion.steps == 1000 and cfg.schedule.name == "linear" and loss == "DDPMLoss"
    elif "ddgan" in row:
        assert getattr(model.objective, "joint", False) or loss == "DDGANLoss"
        assert cfg.ablation.lambda_afd == 0.0
    else:
        assert cfg.ablation.lambda_afd == (0.0 if "no_afd" in row else 1.0) and "SIDDM" in loss


@pytest.mark.parametrize("option", options("discriminator"))
def test_discriminator_options(option):
    from siddm_lab.nets import DiscriminatorOutput

    if option == "mlp_released":  # the released toy discriminator: one real/fake head, two logits
        cfg = compose_cfg(["experiment=siddm_toy_released"])
        model = instantiate(cfg.model)
        out = model.discriminator(torch.randn(3, 2), torch.rand(3))
        assert out.logit.shape == (3, 2) and out.cond is None and out.aux is None
        with pytest.raises(ValueError, match="no"):
            model.discriminator(torch.randn(3, 2), torch.rand(3), heads=("logit", "cond"))
        return
    if option == "mlp":
        overrides, x = ["net=mlp_gen"], torch.randn(3, 2)
    elif option == "ddgan_large":  # it halves the image 6 times
        overrides, x = ["dataset=celebahq256", "dataset.image_size=64", "net=unet_gen", "net.attn_resolutions=[16]"], \
            torch.randn(3, 3, 64, 64)
    else:
        overrides, x = ["dataset=mnist", "net=unet_gen"], torch.randn(3, 1, 32, 32)
    cfg = compose_cfg(["model=siddm", f"discriminator={option}", "schedule=ddgan_vp", "diffusion.steps=4", *overrides])
    model = instantiate(cfg.model)
    out = model.discriminator(x, torch.tensor([0, 1, 2]), heads=("logit", "cond", "aux"))
    assert isinstance(out, DiscriminatorOutput) and out.logit.shape == (3,)
    assert out.cond.shape == x.shape and out.aux.shape == x.shape


def test_groups_that_do_not_fit_together_fail_by_name():
    cfg = compose_cfg(["dataset=mnist", "net=mlp"])  # the 2-D MLP needs dataset.data_dim
    with pytest.raises(ConfigError, match=r"^net: the config does not resolve.*dataset.data_dim"):
        validate(cfg)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["dataset=digits", "net=unet_small", "dataset.image_size=abc"],
         "dataset.image_size='abc' is invalid: expected a positive integer"),
        (["dataset=digits", "net=unet_small", "dataset.channels=0"],
         "dataset.channels=0 is invalid: expected a positive integer"),
        (["model=siddm", "net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4", "model.nz=abc"],
         "model.nz='abc' is invalid: expected an integer >= 0 (given to net.cond_dim)"),
    ],
)
def test_values_the_nets_are_built_from_name_their_own_key(overrides, expected):
    """dataset.image_size / dataset.channels / model.nz reach the nets by interpolation: a bad value is
    reported under the key the user set (the datamodule, built first, checks its image shape; the net's
    net.cond_dim is named as model.nz), before any work."""
    with pytest.raises(ConfigError) as e:
        preflight(compose_cfg(overrides))
    assert str(e.value) == expected


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["net.hidden=abc"], "net.hidden='abc' is invalid: expected an integer >= 1"),
        (["net.num_layers=0"], "net.num_layers=0 is invalid: expected an integer >= 1"),
        (["dataset=digits", "net=unet_small", "net.channel_mult=[1,2,2,2,2]"],
         "net.image_size=8 is not divisible by 2**(len(net.channel_mult)-1)=16"),
        (["dataset=digits", "net=unet_small", "net.ch=48"], "net.ch=48 with net.channel_mult=[1, 2] gives a block"),
        (["dataset=digits", "net=unet_small", "net.dropout=2"],
         "net.dropout=2 is invalid: expected a number in [0, 1)"),
        (["model=siddm", "net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4", "discriminator.hidden=abc"],
         "discriminator.hidden='abc' is invalid: expected an integer >= 1"),
        (["model=siddm_image", "dataset=digits", "net=unet_small", "+net.cond_dim=${model.nz}",
          "discriminator=conv", "discriminator.channel_mult=abc", "schedule=ddgan_vp", "diffusion.steps=4"],
         "discriminator.channel_mult='abc' is invalid"),
    ],
)
def test_bad_net_values_are_one_line_user_errors(overrides, expected, capsys):
    """Through Hydra's instantiate (InstantiationException) the nets' ConfigError reaches the user as one
    `error:` line and exit status 2."""
    from siddm_lab.utils.entry import user_errors

    cfg = compose_cfg(overrides)
    validate(cfg)
    with pytest.raises(SystemExit) as e:
        user_errors(lambda: instantiate(cfg.model))()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err


def test_a_sweep_job_folder_name_stays_within_the_file_system_limit():
    """A job's folder is named by its overrides; a long list is cut and hashed (distinct jobs stay distinct)."""
    from siddm_lab.config import MAX_DIRNAME, short_dirname

    assert short_dirname("seed=0,trainer=ddp_cpu") == "seed=0,trainer=ddp_cpu"
    long_a = ",".join(f"key{i}.value={i}" for i in range(40)) + ",seed=0"
    long_b = long_a[:-1] + "1"
    a, b = short_dirname(long_a), short_dirname(long_b)
    assert len(a.encode()) <= MAX_DIRNAME and len(b.encode()) <= MAX_DIRNAME and a != b
    assert a.startswith(long_a[:100])
