"""Every paper table is a sweep config: each expands to the expected jobs, every job's config
composes and validates, and one job of each training sweep runs end to end at tiny scale (on
stand-in data files for the image tables)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from siddm_lab.config import validate
from tests.conftest import CONF_DIR
from tests.helpers import run_train
from tests.test_data import _write_cifar, _write_mnist

# sweep -> (config name, number of jobs)
SWEEPS = {
    "siddm_toy": ("train", 20),
    "siddm_toy_released": ("train", 3),
    "siddm_ablation_afd": ("train", 7),
    "table_cifar10_main": ("train", 3),
    "siddm_mnist_table": ("train", 4),
    "table_cifar10_afd": ("train", 6),
    "table_cifar10_disc_reg": ("train", 2),
    "table_celebahq256": ("train", 2),
    "table_imagenet64": ("train", 2),
    "variance_5seeds": ("train", 3),
    "schedule_comparison": ("train", 12),
    "noise_comparison": ("train", 6),
    "ddim_table1": ("sample", 25),
    "subsampling_table": ("sample", 5),
}


def _compose(config: str, overrides: list[str], hydra: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config, overrides=overrides, return_hydra_config=hydra)


def expand(config: str, experiment: str) -> list[list[str]]:
    """The job override lists of ``-m experiment=<experiment>`` (Hydra's basic sweeper: the product
    of the sweeper params)."""
    cfg = _compose(config, [f"experiment={experiment}"] + (["ckpt=x.ckpt"] if config == "sample" else []), True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    axes = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
            else [f"{o.get_key_element()}={o.get_value_element_as_str()}"] for o in parsed]
    return [list(job) for job in itertools.product(*axes)]


@pytest.mark.parametrize("experiment", sorted(SWEEPS))
def test_sweep_expands_and_every_job_validates(experiment):
    config, n_jobs = SWEEPS[experiment]
    jobs = expand(config, experiment)
    assert len(jobs) == n_jobs
    assert len({tuple(j) for j in jobs}) == n_jobs  # no duplicated job
    extra = ["ckpt=x.ckpt"] if config == "sample" else []
    for job in jobs:
        cfg = _compose(config, [f"experiment={experiment}", *job, *extra])
        assert cfg.task_name == experiment or config == "sample"
        if config == "train":
            validate(cfg)


def _image_folder(root, n=12, size=16):
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


TINY_IMAGES = ["trainer=cpu", "trainer.devices=1", "trainer.max_steps=2", "trainer.val_check_interval=1",
               "callbacks.evaluation.num_samples=0", "eval.num_samples=4", "eval.batch_size=4", "dataset.batch_size=2",
               "dataset.val_size=2",
               "dataset.num_workers=0", "dataset.metrics.names=[]", "logger=csv", "trainer.precision=32-true"]
# DDGAN's nets (NCSN++, Discriminator_small/large) narrowed, their layout kept
NARROW_NETS = ["net.num_channels_dae=16", "net.num_res_blocks=1", "net.z_emb_dim=16", "net.n_mlp=1",
               "discriminator.ngf=4", "discriminator.t_emb_dim=16"]


@pytest.mark.parametrize("experiment", ["table_cifar10_main", "table_cifar10_afd", "table_cifar10_disc_reg",
                                        "table_celebahq256", "table_imagenet64"])
def test_first_job_of_each_image_table_runs_tiny(experiment, tmp_path):
    job = expand("train", experiment)[0]
    if experiment.startswith("table_cifar10"):
        _write_cifar(tmp_path / "data", n=8)
        data = [f"paths.data_dir={tmp_path / 'data'}", "dataset.reader.verify=none"]
    else:
        size = 256 if "celebahq" in experiment else 64
        for split in ("train", "test"):  # the folder layout with its own test split
            _image_folder(tmp_path / "data" / split, size=size)
        data = [f"paths.data_dir={tmp_path / 'data'}", "dataset.val_size=2"]
    metrics, cfg = run_train([f"experiment={experiment}", *job, *data, *TINY_IMAGES, *NARROW_NETS], tmp_path / "run")
    assert metrics["global_step"] == 2
    assert cfg.model._target_.endswith("SIDDM") and cfg.model.objective._target_.endswith("SIDDMLoss")
    assert (tmp_path / "run" / "samples.npz").is_file()


@pytest.mark.parametrize("experiment", ["siddm_toy", "siddm_toy_released", "siddm_ablation_afd", "variance_5seeds",
                                        "schedule_comparison"])
def test_first_job_of_each_toy_sweep_runs_tiny(experiment, tmp_path):
    job = expand("train", experiment)[0]
    tiny = ["trainer.max_steps=4", "trainer.val_check_interval=2", "dataset.n_train=1024", "dataset.n_val=64",
            "dataset.n_eval=200", "dataset.batch_size=64", "callbacks.evaluation.num_samples=0", "eval.num_samples=200",
            "eval.batch_size=200", "net.hidden=16", "logger=csv"]
    metrics, _ = run_train([f"experiment={experiment}", *job, *tiny], tmp_path)
    assert metrics["global_step"] == 4 and "fd_2d" in metrics


@pytest.mark.parametrize("row", ["siddm", "ddgan", "siddm_no_afd", "siddm_no_disc_reg"])
def test_each_row_of_the_mnist_table_runs_tiny(row, tmp_path):
    """experiment=siddm_mnist_table on stand-in MNIST files (28x28, padded to 32 as the real ones): the
    recipe's nets and objective for each row, two iterations."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("test", 16)):
        _write_mnist(tmp_path / "data", split, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                     rng.integers(0, 10, n, dtype=np.uint8))
    tiny = ["trainer.max_steps=2", "trainer.val_check_interval=2",
            "callbacks.evaluation.num_samples=0", "eval.num_samples=8",
            "eval.batch_size=8", "dataset.val_size=8", "dataset.metrics.names=[]", "dataset.reader.verify=none",
            f"paths.data_dir={tmp_path / 'data'}", "logger=csv"]
    metrics, cfg = run_train(["experiment=siddm_mnist_table", f"+experiment/siddm_mnist_table={row}", "seed=0",
                              *tiny], tmp_path / "run")
    assert metrics["global_step"] == 2 and metrics["nfe"] == 4
    assert cfg.row == row and cfg.net.ch == 16 and cfg.dataset.batch_size == 32
    loss = cfg.model.objective._target_.rsplit(".", 1)[-1]
    assert loss == ("DDGANLoss" if row == "ddgan" else "SIDDMLoss")


@pytest.mark.slow
@pytest.mark.parametrize("experiment,overrides", [
    ("ddgan_cifar10", []), ("siddm_cifar10", []), ("table_imagenet64", ["model=siddm_image"])])
def test_each_image_experiment_trains_on_cpu_with_its_real_nets(experiment, overrides, tmp_path):
    """The papers' nets at full width (NCSN++ 48M, DDGAN's Discriminator_small): one iteration at batch 2 on
    the CPU and a 2-sample evaluation through the generator chain. (CelebA-HQ-256's nets take minutes per
    iteration on a CPU: their layout trains narrowed above, their full size is built in test_image_recipes.)"""
    if "cifar10" in experiment:
        _write_cifar(tmp_path / "data", n=8)
        data = [f"paths.data_dir={tmp_path / 'data'}", "dataset.reader.verify=none"]
    else:
        for split in ("train", "test"):
            _image_folder(tmp_path / "data" / split, size=64, n=4)
        data = [f"paths.data_dir={tmp_path / 'data'}"]
    tiny = [o for o in TINY_IMAGES if not o.startswith(("trainer.max_steps", "eval."))]
    metrics, cfg = run_train([f"experiment={experiment}", *overrides, *data, *tiny, "trainer.max_steps=1",
                              "eval.num_samples=2", "eval.batch_size=2"], tmp_path / "run")
    assert metrics["global_step"] == 1 and metrics["nfe"] == cfg.diffusion.steps
    assert cfg.net._target_.endswith("NCSNpp") and cfg.trainer.precision == "32-true"
