"""The image recipes are the reference commands: DDGAN's CIFAR-10 and CelebA-HQ-256 commands (its README, with
train_ddgan.py's defaults for the flags they leave out) flag by flag, the nets at the reference's exact sizes,
and the places where SIDDM's recipe differs from DDGAN's."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from siddm_lab.config import validate
from tests.helpers import compose_cfg

# flag of the reference command -> (config key, value); defaults of train_ddgan.py where the command omits them
CIFAR10 = {
    "--num_channels_dae 128": ("net.num_channels_dae", 128),
    "--ch_mult 1 2 2 2": ("net.ch_mult", [1, 2, 2, 2]),
    "--num_res_blocks 2": ("net.num_res_blocks", 2),
    "--nz 100": ("model.nz", 100),
    "--z_emb_dim 256": ("net.z_emb_dim", 256),
    "--n_mlp 4": ("net.n_mlp", 4),
    "--ngf 64": ("discriminator.ngf", 64),
    "--num_timesteps 4": ("diffusion.steps", 4),
    "--batch_size 64": ("dataset.batch_size", 64),
    "--num_process_per_node 4": ("trainer.devices", 4),
    "--r1_gamma 0.02": ("model.objective.r1_gamma", 0.02),
    "--lazy_reg 15": ("model.objective.lazy_reg", 15),
    "--lr_d 1.25e-4": ("model.optimizer_d.lr", 1.25e-4),
    "--lr_g 1.6e-4": ("model.optimizer_g.lr", 1.6e-4),
    "--ema_decay 0.9999": ("callbacks.ema.decay", 0.9999),
    "beta1 0.5, beta2 0.9 (defaults)": ("model.optimizer_g.betas", [0.5, 0.9]),
    "cosine decay to 1e-5 (default)": ("model.lr_scheduler_g.eta_min", 1e-5),
    "beta_min 0.1 (default)": ("schedule.beta_min", 0.1),
    "beta_max 20 (default)": ("schedule.beta_max", 20.0),
    "fp32": ("trainer.precision", "32-true"),
    "random h-flips": ("dataset.hflip", True),
    "--num_epoch 1800 (x 195 iterations at batch 256)": ("trainer.max_steps", 1800 * (50000 // 256)),
}
CELEBAHQ = {
    "--num_channels_dae 64": ("net.num_channels_dae", 64),
    "--ch_mult 1 1 2 2 4 4": ("net.ch_mult", [1, 1, 2, 2, 4, 4]),
    "--num_timesteps 2": ("diffusion.steps", 2),
    "--batch_size 4": ("dataset.batch_size", 4),
    "--num_process_per_node 8": ("trainer.devices", 8),
    "--r1_gamma 2.": ("model.objective.r1_gamma", 2.0),
    "--lazy_reg 10": ("model.objective.lazy_reg", 10),
    "--lr_d 1e-4": ("model.optimizer_d.lr", 1e-4),
    "--lr_g 2e-4": ("model.optimizer_g.lr", 2e-4),
    "n_mlp 3 (default)": ("net.n_mlp", 3),
    "ema 0.9999 (default)": ("callbacks.ema.decay", 0.9999),
    "--num_epoch 800 (x 937 iterations at batch 32)": ("trainer.max_steps", 800 * (30000 // 32)),
}


def _check(cfg, flags):
    wrong = {flag: (key, OmegaConf.select(cfg, key), want) for flag, (key, want) in flags.items()
             if OmegaConf.to_object(OmegaConf.create({"v": OmegaConf.select(cfg, key)}))["v"] != want}
    assert not wrong


def test_ddgan_cifar10_is_the_reference_command():
    cfg = compose_cfg(["experiment=ddgan_cifar10"])
    validate(cfg)
    _check(cfg, CIFAR10)
    assert cfg.model.lr_scheduler_g.T_max == cfg.model.lr_scheduler_d.T_max == cfg.trainer.max_steps
    assert cfg.dataset.metrics.reference_split == "train" and cfg.dataset.metrics.reference_size is None
    assert cfg.dataset.metrics.resize == "pytorch_fid" and cfg.eval.num_samples == 50000
    assert cfg.ablation.lambda_afd == 0 and not cfg.ablation.disc_reg


def test_siddm_cifar10_differs_from_ddgan_only_where_the_paper_says():
    ddgan = OmegaConf.to_container(compose_cfg(["experiment=ddgan_cifar10"]), resolve=False)
    siddm = OmegaConf.to_container(compose_cfg(["experiment=siddm_cifar10"]), resolve=False)
    _check(compose_cfg(["experiment=siddm_cifar10"]), CIFAR10)

    def diff(a, b, path=""):
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(set(a) | set(b)) for d in diff(a.get(k), b.get(k), f"{path}.{k}".lstrip("."))]
        return [] if a == b else [path]

    changed = set(diff(ddgan, siddm))
    # the objective (marginal D, AFD, regulariser) and the ablation switches; nothing of nets, optimiser, budget
    assert changed and all(p == "task_name" or p.startswith(("model.objective", "ablation.")) for p in changed)
    assert {"model.objective._target_", "ablation.lambda_afd", "ablation.disc_reg"} <= changed
    assert siddm["ablation"]["lambda_afd"] == 1.0


@pytest.mark.parametrize("experiment,gen,disc", [("ddgan_cifar10", 48_432_515, 12_741_633)])
def test_cifar10_nets_have_the_references_sizes(experiment, gen, disc):
    model = instantiate(compose_cfg([f"experiment={experiment}"]).model)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(model.generator), count(model.discriminator)) == (gen, disc)


def test_celebahq256_table_is_the_reference_command():
    for row in ("siddm_image", "ddgan_image"):
        cfg = compose_cfg(["experiment=table_celebahq256", f"model={row}"])
        validate(cfg)
        _check(cfg, CELEBAHQ)
        assert cfg.net._target_.endswith("NCSNpp") and cfg.discriminator._target_.endswith("DDGANDiscriminatorLarge")


@pytest.mark.slow
def test_celebahq256_nets_have_the_references_sizes():
    cfg = compose_cfg(["experiment=table_celebahq256", "model=ddgan_image", "ablation=no_afd_no_reg"])
    model = instantiate(cfg.model)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(model.generator), count(model.discriminator)) == (39_726_979, 27_737_217)
    with torch.no_grad():
        x = torch.zeros(1, 3, 256, 256)
        assert model.generator(x, torch.zeros(1, dtype=torch.long), torch.zeros(1, 100)).shape == x.shape
