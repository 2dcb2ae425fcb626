"""A fresh training run's initial weights from a checkpoint (``siddm-train init.ckpt=...``): not a resume, a new
run (new optimizers and schedules, iteration 0, its own model and objective) whose nets named in ``init.parts``
start from the checkpoint's weights. This is how a DDGAN imported with ``siddm-import`` (or trained here) is
fine-tuned as SIDDM: its generator is kept, SIDDM's discriminator with its heads starts fresh.

    init:
      ckpt: null            # a .ckpt of siddm-train, python -m siddm_lab.cli.export or siddm-import
      weights: ema          # ema | raw: which of the checkpoint's weights
      parts: [generator]    # generator and/or discriminator

The checkpoint is loaded as ``siddm-sample`` loads it (``load_model``: weights_only, its stored config checked
against conf/), before the run writes anything. Each part's weights must fit the run's net exactly (same keys
and shapes); otherwise the error names the config keys where the two nets differ.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from siddm_lab.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

PARTS = ("generator", "discriminator")


def _flat(tree, prefix: str) -> dict:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}.{key}").items()}
    return {prefix: tree}


def _differences(saved, current, prefix: str) -> list[str]:
    a, b = _flat(saved or {}, prefix), _flat(current or {}, prefix)
    return [f"{k}: checkpoint {a.get(k, '(absent)')!r}, this run {b.get(k, '(absent)')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, "(absent)") != b.get(k, "(absent)")]


def _settings(cfg: DictConfig) -> tuple[str, str, list[str]]:
    init = cfg.get("init")
    ckpt = init.get("ckpt")
    weights = init.get("weights", "ema")
    parts = init.get("parts", ["generator"])
    parts = [parts] if isinstance(parts, str) else list(parts or [])
    if not parts or any(p not in PARTS for p in parts) or len(set(parts)) != len(parts):
        raise ConfigError(f"init.parts={parts!r} is invalid: expected a non-empty list of distinct nets from "
                          f"{', '.join(PARTS)}")
    if weights not in ("ema", "raw"):
        raise ConfigError(f"init.weights={weights!r} is unknown; allowed: ema, raw")
    if cfg.get("seeds"):
        raise ConfigError("init.ckpt initialises a single model; an ensemble (seeds=[...]) cannot start from it: "
                          "sweep the seeds instead (-m seed=0,1,2)")
    return str(ckpt), weights, parts


def weights_initialiser(cfg: DictConfig) -> Callable | None:
    """``model -> None`` copying ``init.parts`` of ``init.ckpt`` into a freshly built model, or None without
    ``init.ckpt``. The checkpoint is loaded and checked here (before the run writes anything)."""
    init = cfg.get("init")
    if not init or not init.get("ckpt"):
        return None
    path, weights, parts = _settings(cfg)
    from siddm_lab.models.loading import load_checkpoint, load_model

    source, source_cfg = load_model(path, weights)
    imported = load_checkpoint(path, mmap=True).get("siddm_import")
    held = list(imported.get("parts") or []) if isinstance(imported, dict) else None
    saved = OmegaConf.to_container(source_cfg, resolve=True)
    current = OmegaConf.to_container(cfg, resolve=True)
    for part in parts:
        if getattr(source, part, None) is None:
            raise CheckpointError(f"init.ckpt={path} holds a {type(source).__name__}, which has no {part}; "
                                  f"init.parts may name only the nets it has")
        if held is not None and part not in held:
            raise CheckpointError(f"init.ckpt={path} holds no {part} weights (siddm-import of "
                                  f"{imported.get('file')}, which has none); use init.parts=[generator]")
    changed = _differences(saved.get("diffusion"), current.get("diffusion"), "diffusion")
    changed += _differences(saved.get("schedule"), current.get("schedule"), "schedule")
    if changed:
        log.warning("init.ckpt=%s was trained with another process than this run's (%s)", path, "; ".join(changed))

    def initialise(model) -> None:
        for part in parts:
            net = getattr(model, part, None)
            if net is None:
                raise ConfigError(f"init.parts has {part} but this run's {type(model).__name__} has none")
            state = getattr(source, part).state_dict()
            try:
                missing, unexpected = net.load_state_dict(state, strict=False)
            except RuntimeError as e:  # shape mismatches
                missing, unexpected = ["(shapes)"], [str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)]
            if missing or unexpected:
                key = "generator" if part == "generator" else "discriminator"
                diffs = _differences(saved["model"].get(key), current["model"].get(key), f"model.{key}")
                if part == "discriminator" and getattr(net, "joint", None) != getattr(source.discriminator, "joint",
                                                                                      None):
                    diffs.append(f"joint: checkpoint {source.discriminator.joint}, this run {net.joint} (from the "
                                 f"objective)")
                raise CheckpointError(
                    f"init.ckpt={path}: its {part} does not fit this run's ("
                    + ("; ".join(diffs) if diffs else f"missing {list(missing)[:4]}, unexpected {list(unexpected)[:4]}")
                    + f"). Build the {part} the checkpoint has (its config: the checkpoint's siddm_config, or its "
                    f"run's config.yaml)" + ("" if part == "generator" else ", or leave it out of init.parts"))
            log.info("init.ckpt=%s: %s weights (%s) copied into this run's %s", path, weights, part, part)

    return initialise
