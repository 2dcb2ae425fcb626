"""Which checkpoint a run of ``siddm-train`` starts from, and whether it may.

A run resumes only when asked (``ckpt_path=last`` or ``ckpt_path=<file>``), and only from a
checkpoint of the same model and process; a fresh run never writes over an earlier run's results.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from siddm_lab.errors import CheckpointError
from siddm_lab.models.loading import load_checkpoint

log = logging.getLogger(__name__)

# Keys of `model` that say how the model is evaluated and logged, not what is trained: a resumed run
# may change them (as it may change trainer.max_steps to train longer).
EVAL_KEYS = ("eval_num_samples", "log_every_n_steps", "sampling")
# What a checkpoint's weights and optimizer states belong to: the architecture, the objective and
# optimisers (`model`), the process (`diffusion`) and the ensemble's members (`seeds`).
TRAINED_KEYS = ("model", "diffusion", "seeds")


def previous_results(out_dir: Path) -> list[Path]:
    """The files of an earlier run in ``out_dir``: checkpoints (``checkpoints/``, Lightning's SLURM
    ``hpc_ckpt_*``) and final metrics (``metrics.json``, one per ensemble member)."""
    found = sorted((out_dir / "checkpoints").glob("*.ckpt")) + sorted(out_dir.glob("hpc_ckpt_*.ckpt"))
    found += [p for p in [out_dir / "metrics.json", *sorted(out_dir.glob("seed_*/metrics.json"))] if p.is_file()]
    return found


def _flat(tree, prefix: str) -> dict:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}.{key}").items()}
    return {prefix: tree}


def trained_config(config: dict) -> dict:
    """The resolved config's keys that a checkpoint's states depend on (``TRAINED_KEYS`` less
    ``model.EVAL_KEYS``), flattened to dotted names."""
    flat: dict = {}
    for key in TRAINED_KEYS:
        sub = config.get(key)
        if key == "model" and isinstance(sub, dict):
            sub = {k: v for k, v in sub.items() if k not in EVAL_KEYS}
        flat.update(_flat(sub, key))
    return flat


_ABSENT = "(absent)"

# Keys added to the config after checkpoints were written, with the value the code used before they existed:
# a checkpoint without the key trained with that value, so it may resume under the current default.
ADDED_KEYS = {".diffusion.noise.name": "gaussian"}


def _with_added_defaults(flat: dict) -> dict:
    out = dict(flat)
    prefixes = {k.split(".diffusion.")[0] for k in flat if ".diffusion." in k}
    for prefix in prefixes:
        for suffix, value in ADDED_KEYS.items():
            out.setdefault(prefix + suffix, value)
    return out


def config_changes(saved: dict, current: dict) -> list[str]:
    """``key: checkpoint <v>, now <v>`` for each trained key whose value differs (a key the checkpoint
    predates counts as its old default, ``ADDED_KEYS``)."""
    a, b = _with_added_defaults(trained_config(saved)), trained_config(current)
    return [f"{k}: checkpoint {a.get(k, _ABSENT)!r}, now {b.get(k, _ABSENT)!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def check_compatible(path, current: dict) -> None:
    """Refuse to resume from ``path`` (loaded safely) when the run's config trains something else."""
    ckpt = load_checkpoint(path, mmap=True)  # refuses pickled objects, names corrupt files
    if "optimizer_states" not in ckpt:
        what = "imported by siddm-import" if "siddm_import" in ckpt else "an exported checkpoint"
        raise CheckpointError(f"cannot resume from {path}: it holds weights only ({what}), no optimizer or loop "
                              f"state; start a new run from its weights with init.ckpt={path} (and no ckpt_path)")
    changes = config_changes(ckpt["siddm_config"], current)
    if changes:
        raise CheckpointError(
            f"cannot resume from {path}: this run's config changes what the checkpoint trained ("
            + "; ".join(changes) + "). Resume with the checkpoint's values (its run's config.yaml), or train "
            "a new model in another folder (hydra.run.dir=...); evaluation and logging keys and "
            "trainer.max_steps may change")


def _requeue_count() -> int:
    """How often SLURM has requeued this job (pre-emption, time-out): the job is then the same run."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def resolve_ckpt_path(cfg: DictConfig, out_dir: Path) -> str | None:
    """The ``ckpt_path`` to give ``Trainer.fit``, checked before anything is written to ``out_dir``:

    - ``None`` (a fresh run): ``out_dir`` must hold no earlier run's checkpoints or metrics, which
      Lightning would otherwise resume from and overwrite. A job requeued by SLURM is the same run
      and continues from its newest checkpoint, as Lightning chooses it (``hpc_ckpt``, else the
      newest of last.ckpt / on_exception.ckpt).
    - ``"last"``: the newest of ``last.ckpt`` / ``on_exception.ckpt`` in ``out_dir/checkpoints``
      (chosen by Lightning); each of them must belong to this config.
    - a checkpoint file, which must belong to this config.
    """
    ckpt_path = cfg.get("ckpt_path")
    ckpt_dir = out_dir / "checkpoints"
    current = OmegaConf.to_container(cfg, resolve=True)
    if ckpt_path is None:
        earlier = previous_results(out_dir)
        if earlier and _requeue_count() > 0:
            log.info("requeued SLURM job (SLURM_RESTART_COUNT=%d): continuing the run in %s from its newest "
                     "checkpoint", _requeue_count(), out_dir)
            for path in earlier:
                if path.suffix == ".ckpt" and not path.name.startswith("step_"):
                    check_compatible(path, current)
            return None
        if earlier:
            names = ", ".join(str(p.relative_to(out_dir)) for p in earlier[:4]) + (", ..." if len(earlier) > 4 else "")
            raise CheckpointError(
                f"{out_dir} already holds an earlier run ({names}) and this run would overwrite it: resume "
                f"that run with ckpt_path=last, or start a new one in another folder (another hydra.run.dir)")
        # Lightning resolves None to "last" when OnExceptionCheckpoint is present; nothing to load
        # in a fresh run folder, which it would announce with a warning.
        warnings.filterwarnings("ignore", message=".*ckpt_path=None.. was called without a model.*")
        warnings.filterwarnings("ignore", message=".*there is no last checkpoint available.*")
        return None
    if ckpt_path == "last":
        candidates = [p for p in sorted(ckpt_dir.glob("last*.ckpt")) + [ckpt_dir / "on_exception.ckpt"]
                      if p.is_file()]
        if not candidates:
            raise CheckpointError(f"ckpt_path=last but {ckpt_dir} holds no checkpoint to resume from (last.ckpt "
                                  f"or on_exception.ckpt); resume a run by pointing hydra.run.dir at its "
                                  f"folder, or give ckpt_path=<file.ckpt>")
        for candidate in candidates:
            check_compatible(candidate, current)
        return "last"
    if not Path(ckpt_path).is_file():
        raise CheckpointError(f"ckpt_path={ckpt_path} does not exist (give a .ckpt file, or 'last')")
    check_compatible(ckpt_path, current)
    return str(ckpt_path)
