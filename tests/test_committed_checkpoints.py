"""The checkpoints committed in experiments/checkpoints/ (manifest.json: sha256, the command that trained
each, how to sample it and its NFE): every file matches its sha256, loads with weights_only, and samples
with its recorded sampler at its recorded NFE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from siddm_lab.models.export import verify
from tests.test_sample import run_sample

CHECKPOINTS = Path(__file__).resolve().parents[1] / "experiments" / "checkpoints"
MANIFEST = CHECKPOINTS / "manifest.json"
ENTRIES = json.loads(MANIFEST.read_text())


def test_every_committed_checkpoint_matches_its_sha256():
    assert ENTRIES and verify(MANIFEST) == []
    for name, entry in ENTRIES.items():
        assert {"sha256", "command", "iterations", "sample", "nfe"} <= set(entry), name
        assert (CHECKPOINTS / name).stat().st_size < 25 * 2**20, f"{name}: committed checkpoints stay small"


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_committed_checkpoint_samples_at_its_recorded_nfe(name, tmp_path):
    entry = ENTRIES[name]
    info = run_sample([f"ckpt={CHECKPOINTS / name}", "num_samples=4", "batch_size=4", "metrics=false",
                       *entry["sample"]], tmp_path)
    assert info["nfe"] == entry["nfe"]
    x = np.load(tmp_path / "samples.npz")["samples"]
    if "toy" in name:
        assert x.shape == (4, 2) and np.isfinite(x).all()  # 25-Gaussians points
    else:
        assert x.shape == (4, 1, 32, 32) and x.dtype == np.uint8  # MNIST, padded to 32
    assert x.std() > 0  # not a constant image
