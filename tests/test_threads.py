"""``threads``: a run's torch CPU threads (auto = the CPUs of the affinity mask, shared among CPU DDP
processes), checked when the config is composed."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from siddm_lab.config import validate
from siddm_lab.errors import ConfigError
from siddm_lab.utils import threads as th
from tests.helpers import compose_cfg


def test_auto_is_the_affinity_share_of_each_local_process(monkeypatch):
    monkeypatch.setattr(th, "available_cpus", lambda: 8)
    assert th.resolve_threads("auto") == 8
    assert th.resolve_threads("auto", local_processes=2) == 4
    assert th.resolve_threads("auto", local_processes=3) == 2
    assert th.resolve_threads("auto", local_processes=16) == 1  # never 0
    assert th.resolve_threads(3, local_processes=2) == 3  # an explicit count is taken as given


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "two"])
def test_bad_threads_are_refused_by_name(bad):
    with pytest.raises(ConfigError, match="threads="):
        th.resolve_threads(bad)
    cfg = compose_cfg([])
    cfg.threads = bad
    with pytest.raises(ConfigError, match="threads"):
        validate(cfg)


def test_local_processes_of_a_cpu_ddp_trainer():
    cfg = compose_cfg(["trainer=ddp_cpu"])
    assert th.local_processes(cfg.trainer) == int(cfg.trainer.devices) >= 2
    assert th.local_processes(compose_cfg([]).trainer) == 1
    assert th.local_processes(OmegaConf.create({"accelerator": "gpu", "devices": 4})) == 1


def test_apply_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        assert th.apply_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("config", ["train", "sample", "distill"])
def test_every_entry_point_has_the_setting(config):
    from siddm_lab.config import compose

    overrides = {"train": [], "sample": ["ckpt=x.ckpt"], "distill": ["teacher=x.ckpt"]}[config]
    assert compose(overrides, config).threads == "auto"
