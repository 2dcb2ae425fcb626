"""Rebuild a trained model from a siddm_lab checkpoint (safe loading, clear errors)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from siddm_lab.config import CONF_DIR
from siddm_lab.errors import CheckpointError

WEIGHTS = ("ema", "raw")

# Targets that earlier versions of conf/ used and that the configs stored in their checkpoints still
# name (they are never built from a checkpoint, but the whole stored config is checked).
FORMER_TARGETS = frozenset({"lightning.pytorch.callbacks.ModelCheckpoint", "siddm_lab.models.distill.student_sampler"})
# What a stored config may hold besides mappings and lists: what OmegaConf.to_container writes.
_PLAIN = (str, int, float, bool, type(None))


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


def _conf_targets(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                yield value
            yield from _conf_targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _conf_targets(value)


@functools.cache
def allowed_targets(conf_dir=CONF_DIR) -> frozenset[str]:
    """The ``_target_`` values a checkpoint's stored config may name: those of the project's own
    configs (``conf/**/*.yaml``, which is also where a user's own model config goes), and
    ``FORMER_TARGETS``. Exact names, never a prefix: ``torch.load`` or ``torch.hub.load`` is no
    better a target than ``os.system``."""
    found = {t for p in Path(conf_dir).rglob("*.yaml") for t in _conf_targets(yaml.safe_load(p.read_text()))}
    return frozenset(t for t in found if "${" not in t) | FORMER_TARGETS


@functools.cache
def model_targets(conf_dir=CONF_DIR) -> frozenset[str]:
    """The ``_target_`` values that may build a checkpoint's model (``model._target_``): those of the model
    options (``conf/model``) and of the distillation students (``conf/distill``, a student run's ``model``).
    Another target of the project's configs (a logger, an optimizer, a net) is allowed elsewhere in the tree,
    not as the model."""
    found = set()
    for group in ("model", "distill"):
        for p in (Path(conf_dir) / group).glob("*.yaml"):
            node = yaml.safe_load(p.read_text())
            if isinstance(node, dict) and isinstance(node.get("_target_"), str):
                found.add(node["_target_"])
    return frozenset(t for t in found if "${" not in t)


def _groups_using(target: str, conf_dir=CONF_DIR) -> list[str]:
    """The config groups (folders of ``conf/``) whose options name ``target``."""
    return sorted({p.relative_to(conf_dir).parts[0] for p in Path(conf_dir).rglob("*.yaml")
                   if target in set(_conf_targets(yaml.safe_load(p.read_text())))})


def _check_model_target(config, path) -> None:
    model = config.get("model")
    target = model.get("_target_") if isinstance(model, dict) else None
    if not isinstance(model, dict) or target is None:
        raise CheckpointError(f"refusing to load {path}: its stored config has no model._target_ (the model class "
                              f"siddm-train records)")
    if target not in model_targets():
        used = ", ".join(_groups_using(target)) or "no group"
        raise CheckpointError(
            f"refusing to load {path}: its stored config sets model._target_={target!r}, which the project's configs "
            f"use elsewhere ({used}), not as a model, so nothing was built. Allowed at model._target_: "
            f"{', '.join(sorted(model_targets()))}")


def _key(parent: str, key) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def check_stored_config(config, path) -> None:
    """Refuse a stored run config that could call anything the project's configs do not, before
    any of it is built: Hydra imports and calls whatever a ``_target_`` names, anywhere in the tree
    (``_args_`` and lists included). Interpolations are refused too, since resolving one
    (``${oc.create:...}``, ``_target_: ${key}``) yields what this walk never saw; siddm-train stores
    the resolved config, so its checkpoints hold none."""
    if not isinstance(config, dict):
        raise CheckpointError(f"refusing to load {path}: its 'siddm_config' is a {type(config).__name__}, not the "
                              f"mapping of a run config that siddm-train stores")
    allowed = allowed_targets()
    stack = [("", config, frozenset({id(config)}))]  # (key, node, ids of the node and its parents)
    while stack:
        parent, node, above = stack.pop()
        for k, value in node.items() if isinstance(node, dict) else enumerate(node):
            key = _key(parent, k)
            if k == "_target_":
                _check_target(value, key, allowed, path)
            if isinstance(value, (dict, list, tuple)):
                if id(value) in above:
                    raise CheckpointError(f"refusing to load {path}: its stored config contains itself at {key}")
                stack.append((key, value, above | {id(value)}))
            elif not isinstance(value, _PLAIN):
                raise CheckpointError(f"refusing to load {path}: its stored config holds a {type(value).__name__} "
                                      f"at {key}, where a run config has plain values")
            elif isinstance(value, str) and "${" in value:
                raise CheckpointError(f"refusing to load {path}: its stored config holds an interpolation at {key} "
                                      f"({value!r}); siddm-train stores the resolved config, which has none")


def _check_target(value, key: str, allowed: frozenset[str], path) -> None:
    if not isinstance(value, str):
        raise CheckpointError(f"refusing to load {path}: its stored config sets {key} to a {type(value).__name__} "
                              f"({value!r}); a target must be a string naming one of the classes or functions "
                              f"the project's configs use")
    if value not in allowed:
        examples = ", ".join(t for t in sorted(allowed) if t.startswith(("siddm_lab.models.", "torch.")))
        raise CheckpointError(
            f"refusing to load {path}: its stored config sets {key}={value!r}, which no config of the project "
            f"uses, so nothing was built. Allowed: the {len(allowed)} _target_ values of the configs in {CONF_DIR} "
            f"(e.g. {examples}); a class of your own is allowed once a config there names it")


def _upgrade(cfg, state: dict):
    """A checkpoint of an earlier layout in today's: the model's own sampler settings (``model.sampling``,
    now the ``sampler`` group) and its periodic evaluation's size (``model.eval_num_samples``, now
    ``callbacks.evaluation.num_samples``) are dropped, and a DDPM/DDIM denoiser saved as ``net.*`` is the
    generator's ``generator.net.*``."""
    for key in ("sampling", "eval_num_samples"):
        if key in cfg.model:
            cfg.model.pop(key)
    denoiser = str(cfg.model.get("_target_", "")).startswith("siddm_lab.models.DD")
    if denoiser and any(k.startswith("net.") for k in state):
        state = {("generator." + k if k.startswith("net.") else k): v for k, v in state.items()}
    return cfg, state


def load_model(path, weights: str = "ema", device: str | torch.device = "cpu", member: int | None = None):
    """(model, run_config) from a checkpoint; ``weights`` = ema (the averaged weights, the
    checkpoint's ``state_dict``) or raw (``current_model_state``). A checkpoint of an ensemble
    (``seeds=[...]``) holds one model per seed: ``member`` (a training seed) picks one."""
    if weights not in WEIGHTS:
        raise CheckpointError(f"weights={weights!r} is unknown; allowed: {', '.join(WEIGHTS)}")
    ckpt = load_checkpoint(path)
    check_stored_config(ckpt["siddm_config"], path)
    _check_model_target(ckpt["siddm_config"], path)
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
    cfg, state = _upgrade(cfg, state)
    model = instantiate(cfg.model)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"checkpoint {path} does not match the model its config builds "
                              f"({cfg.model._target_}): {str(e).splitlines()[1].strip()} ...") from e
    imported = ckpt.get("siddm_import")
    if isinstance(imported, dict) and "discriminator" not in list(imported.get("parts") or []):
        # a generator alone (siddm-import of DDGAN's netG_<epoch>.pth): the discriminator stays as initialised
        missing = [k for k in missing if not k.startswith("discriminator.")]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match the model its config builds ({cfg.model._target_}): "
            f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
    model.on_load_checkpoint(ckpt)  # the module's own entries (data shape, training time, a distillation's round)
    return model.to(device).eval(), cfg
