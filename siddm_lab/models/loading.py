"""Rebuild a trained model from a siddm_lab checkpoint (safe loading, clear errors)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from siddm_lab.errors import CheckpointError

WEIGHTS = ("ema", "raw")


def load_checkpoint(path, mmap: bool = False) -> dict:
    """``torch.load(weights_only=True)``: a checkpoint holding arbitrary pickled objects is refused.
    ``mmap=True`` maps the tensors instead of reading them (a cheap check of a file loaded later)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (a .ckpt written by siddm-train, e.g. "
                              f"runs/<task>/<date>/checkpoints/last.ckpt)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - torch's unpickler raises anything on a foreign file
        raise _unreadable(path, e) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    if "siddm_config" not in ckpt:
        raise CheckpointError(f"{path} was not written by siddm-train (no 'siddm_config' with the run's config)")
    return ckpt


def _unreadable(path: Path, e: Exception) -> CheckpointError:
    """The reason a file failed ``torch.load(weights_only=True)``, without torch's advice to load it
    unsafely: it holds objects beyond tensors and plain containers (named), or it is not a checkpoint,
    truncated or corrupt."""
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    if found:
        return CheckpointError(f"refusing to load {path}: besides tensors it holds a pickled {found.group(1)!r} "
                               f"object, which could run code; siddm_lab checkpoints never do")
    if isinstance(e, RuntimeError) and "zip archive" in str(e):
        return CheckpointError(f"cannot read checkpoint {path}: the file is truncated or corrupt (an incomplete "
                               f"PyTorch archive)")
    return CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint, or a truncated or corrupt "
                           f"one ({type(e).__name__})")


def load_model(path, weights: str = "ema", device: str | torch.device = "cpu", member: int | None = None):
    """(model, run_config) from a checkpoint; ``weights`` = ema (the averaged weights, the
    checkpoint's ``state_dict``) or raw (``current_model_state``). A checkpoint of an ensemble
    (``seeds=[...]``) holds one model per seed: ``member`` (a training seed) picks one."""
    if weights not in WEIGHTS:
        raise CheckpointError(f"weights={weights!r} is unknown; allowed: {', '.join(WEIGHTS)}")
    ckpt = load_checkpoint(path)
    cfg = OmegaConf.create(ckpt["siddm_config"])
    state = ckpt["state_dict"]
    if weights == "raw":
        if "current_model_state" not in ckpt:
            raise CheckpointError(f"{path} holds no separate raw weights (trained without EMA): use weights=ema")
        state = ckpt["current_model_state"]
    seeds = list(cfg.get("seeds") or [])
    if seeds:
        if member is None or member not in seeds:
            raise CheckpointError(f"{path} holds an ensemble of {len(seeds)} models (seeds {seeds}): choose one with "
                                  f"member=<seed>" + ("" if member is None else f" (member={member} is not one)"))
        from siddm_lab.models.siddm import SIDDM

        state = SIDDM.member_state_dict(state, seeds.index(member))
    elif member is not None:
        raise CheckpointError(f"member={member} but {path} holds a single model (trained with seed={cfg.get('seed')})")
    model = instantiate(cfg.model)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"checkpoint {path} does not match the model its config builds "
                              f"({cfg.model._target_}): {str(e).splitlines()[1].strip()} ...") from e
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match the model its config builds ({cfg.model._target_}): "
            f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
    model.data_shape = tuple(ckpt.get("data_shape") or ())
    model.run_config = ckpt["siddm_config"]
    model.global_step_at_save = int(ckpt.get("global_step", 0))
    return model.to(device).eval(), cfg
