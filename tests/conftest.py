import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"


def shared_data_dir() -> Path:
    return Path(os.environ.get("SIDDM_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture
def mnist_root():
    root = shared_data_dir()
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST not found under {root} (set SIDDM_DATA_DIR)")
    return root


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # never read or write the user's cache (MNIST classifier) from tests
    monkeypatch.setenv("SIDDM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
