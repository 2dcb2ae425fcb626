"""Small, shareable checkpoints: the (EMA) weights and the run's config of a siddm-train checkpoint,
without optimizer or callback states, and a manifest that records how each was made (the library side of
``python -m siddm_lab.cli.export``).

An exported file loads like any checkpoint (``siddm-sample ckpt=DST.ckpt``, ``load_model``). From an
ensemble (``seeds=[...]``) one member is exported as a single model (its config records ``seed`` = the
member and no ``seeds``). The manifest maps each file name to its sha256, the command that trained it,
its iterations and training seconds; ``verify`` checks every file against it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from siddm_lab.errors import CheckpointError
from siddm_lab.models.loading import load_checkpoint


def sha256(path) -> str:
    """Hex digest of a file, read in 1 MiB chunks (checkpoints can be larger than memory allows twice)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export(src, dst, member: int | None = None) -> dict:
    """Write the small checkpoint; return its manifest entry (without the command)."""
    ckpt = load_checkpoint(src)
    config = dict(ckpt["siddm_config"])
    state = ckpt["state_dict"]
    seeds = list(config.get("seeds") or [])
    if seeds:
        if member not in seeds:
            raise CheckpointError(f"{src} holds an ensemble (seeds {seeds}): choose one with --member SEED")
        from siddm_lab.models.siddm import SIDDM

        state = SIDDM.member_state_dict(state, seeds.index(member))
        config.update(seed=member, seeds=None)
    elif member is not None:
        raise CheckpointError(f"--member {member} but {src} holds a single model")
    small = {"state_dict": {k: v.clone() for k, v in state.items()}, "siddm_config": config,
             "data_shape": ckpt.get("data_shape"), "global_step": int(ckpt.get("global_step", 0)),
             "siddm_train_seconds": float(ckpt.get("siddm_train_seconds", 0.0))}
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save(small, dst)
    return {"sha256": sha256(dst), "iterations": small["global_step"],
            "train_seconds": round(small["siddm_train_seconds"], 1), "seed": config.get("seed")}


def verify(manifest) -> list[str]:
    """Problems (missing or changed files) of the files a manifest lists, in its folder."""
    manifest = Path(manifest)
    entries = json.loads(manifest.read_text())
    problems = []
    for name, entry in entries.items():
        path = manifest.parent / name
        if not path.is_file():
            problems.append(f"{path}: missing (regenerate it with the manifest's command)")
        elif sha256(path) != entry["sha256"]:
            problems.append(f"{path}: sha256 differs from {manifest} (the file changed or is corrupt)")
    return problems


def add_to_manifest(manifest, dst, entry: dict) -> None:
    """Record ``entry`` for the file ``dst`` in the JSON manifest (created if missing), under its path
    relative to the manifest's folder, where ``verify`` looks for it."""
    path = Path(manifest)
    entries = json.loads(path.read_text()) if path.is_file() else {}
    entries[str(Path(dst).resolve().relative_to(path.resolve().parent))] = entry
    path.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
