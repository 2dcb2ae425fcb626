"""Unreadable checkpoints: each kind of bad file gets a CheckpointError that says what is wrong
(not a checkpoint / truncated / corrupt / foreign objects), never a raw unpickler traceback and
never torch's advice to load it with weights_only=False."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch

from siddm_lab.errors import CheckpointError
from siddm_lab.models.loading import load_checkpoint


def _good(path):
    torch.save({"state_dict": {"w": torch.ones(1000)}, "siddm_config": {}}, path)
    return path


@pytest.mark.parametrize("kind,reason", [
    ("random_bytes", "not a PyTorch checkpoint, or a truncated or corrupt one"),
    ("text", "not a PyTorch checkpoint, or a truncated or corrupt one"),
    ("empty", "the file is empty"),
    ("truncated", "truncated or corrupt"),
    ("foreign_object", "holds a pickled 'pathlib"),
])
def test_unreadable_checkpoints_say_why(tmp_path, kind, reason):
    path = tmp_path / f"{kind}.ckpt"
    if kind == "random_bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "text":
        path.write_text("hello world\n" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = _good(tmp_path / "good.ckpt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        torch.save({"state_dict": {}, "siddm_config": {}, "x": pathlib.Path("/tmp")}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    message = str(e.value)
    assert reason in message and str(path) in message, message
    assert "weights_only" not in message, message


def test_a_good_checkpoint_loads(tmp_path):
    ckpt = load_checkpoint(_good(tmp_path / "good.ckpt"))
    assert ckpt["state_dict"]["w"].shape == (1000,)
