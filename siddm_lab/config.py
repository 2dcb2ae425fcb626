"""Validation of a composed config: fail before any work, naming the key, value and what is allowed.

Hydra already rejects unknown group options ("Could not find 'schedule/foo'. Available options:
...") and unknown keys (struct mode). This adds types and ranges of the values users override.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from siddm_lab.diffusion import PREDICTION_TYPES, SCHEDULES, SUBSEQUENCES, VARIANCE_TYPES
from siddm_lab.errors import ConfigError

# The project's Hydra config groups (conf/ beside the package).
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

_MISSING = object()
ABLATION_KEYS = ("name", "lambda_afd", "afd_form", "entropy", "disc_reg", "lambda_disc_reg", "adversarial")


def _get(cfg: DictConfig, key: str):
    try:
        return OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=True)
    except Exception as e:  # interpolation to a missing key etc.
        raise ConfigError(f"{key}: cannot be resolved ({e})") from e


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _eta_ok(v) -> bool:
    return v == "sigma_hat" or (_is_num(v) and 0 <= v < float("inf"))


# key, predicate, description of what is allowed. Keys absent from a config are skipped.
Rule = tuple[str, Callable[[Any], bool], str]
RULES: list[Rule] = [
    ("seed", lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    ("threads", lambda v: v == "auto" or (_is_int(v) and v >= 1), "'auto' or a positive integer (torch CPU threads)"),
    ("diffusion.steps", lambda v: _is_int(v) and v >= 1, "a positive integer"),
    ("schedule.name", lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
    ("schedule.beta_start", lambda v: _is_num(v) and 0 < v < 1, "a number in (0, 1)"),
    ("schedule.beta_end", lambda v: _is_num(v) and 0 < v < 1, "a number in (0, 1)"),
    ("model.prediction_type", lambda v: v in PREDICTION_TYPES, f"one of {', '.join(PREDICTION_TYPES)}"),
    ("sampler.variance_type", lambda v: v in VARIANCE_TYPES, f"one of {', '.join(VARIANCE_TYPES)}"),
    ("sampler.eta", _eta_ok, "a finite number >= 0 or 'sigma_hat'"),
    ("sampler.clip_x0", lambda v: v is None or (_is_num(v) and v > 0), "null or a positive number"),
    ("subsequence.name", lambda v: v in SUBSEQUENCES, f"one of {', '.join(SUBSEQUENCES)}"),
    ("num_samples", lambda v: _is_int(v) and v >= 1, "a positive integer"),
    ("batch_size", lambda v: _is_int(v) and v >= 1, "a positive integer"),
    ("model.optimizer.lr", lambda v: _is_num(v) and 0 < v < float("inf"), "a finite positive number"),
    ("model.optimizer_g.lr", lambda v: _is_num(v) and 0 < v < float("inf"), "a finite positive number"),
    ("model.optimizer_d.lr", lambda v: _is_num(v) and 0 < v < float("inf"), "a finite positive number"),
    ("distill.optimizer.lr", lambda v: _is_num(v) and 0 < v < float("inf"), "a finite positive number"),
    ("dataset.batch_size", lambda v: _is_int(v) and v >= 1, "a positive integer"),
    ("dataset.num_workers", lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    ("trainer.max_steps", lambda v: _is_int(v) and (v == -1 or v >= 1), "a positive integer (or -1: no limit)"),
    # Training is counted in iterations (check_val_every_n_epoch is null), where Lightning takes only an integer
    # (a fraction of an epoch is refused); it is also the period of the checkpoints.
    ("trainer.val_check_interval", lambda v: _is_int(v) and v >= 1,
     "a positive integer (iterations between validations and checkpoints)"),
    ("eval.num_samples", lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    ("eval.batch_size", lambda v: _is_int(v) and v >= 1, "a positive integer"),
    ("eval.seed", lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    ("ablation.lambda_afd", lambda v: _is_num(v) and 0 <= v < float("inf"), "a finite number >= 0"),
    ("ablation.lambda_disc_reg", lambda v: _is_num(v) and 0 <= v < float("inf"), "a finite number >= 0"),
    ("ablation.afd_form", lambda v: v in ("released", "paper"), "one of released, paper"),
    # the objective's own keys (they follow `ablation` unless set directly: then named as set)
    ("model.objective.lambda_afd", lambda v: _is_num(v) and 0 <= v < float("inf"), "a finite number >= 0"),
    ("model.objective.lambda_disc_reg", lambda v: _is_num(v) and 0 <= v < float("inf"), "a finite number >= 0"),
    ("model.objective.afd_weight", lambda v: _is_num(v) and 0 <= v < float("inf"), "a finite number >= 0"),
    ("model.objective.afd_form", lambda v: v in ("released", "paper"), "one of released, paper"),
    ("model.z_dist", lambda v: v in ("normal", "uniform"), "one of normal, uniform"),
    # Interpolated into the nets (in_channels, image_size, cond_dim): named here under the key the user sets.
    ("dataset.image_size", lambda v: _is_int(v) and v >= 1, "a positive integer"),
    ("dataset.channels", lambda v: _is_int(v) and v >= 1, "a positive integer"),
    ("model.nz", lambda v: _is_int(v) and v >= 1, "a positive integer"),
]


# Keys that moved, with where they are now (a config or command line of an earlier version names them).
MOVED = {"model.eval_num_samples": "callbacks.evaluation.num_samples",
         "distill.eval_num_samples": "callbacks.evaluation.num_samples"}


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid value (or an interpolation that does not resolve)."""
    for old, new in MOVED.items():
        if _get(cfg, old) is not _MISSING:
            raise ConfigError(f"{old} is now {new} (the periodic evaluation is a callback): set {new} instead")
    for key in cfg:
        if key == "hydra":
            continue
        try:
            OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        except Exception as e:  # noqa: BLE001 - omegaconf raises several types
            if "HydraConfig was not set" in str(e):  # composed outside a Hydra app (API use, tests)
                continue
            raise ConfigError(f"{key}: the config does not resolve: {str(e).splitlines()[0]} "
                              f"(check the groups chosen together, e.g. a net for this dataset)") from e
    for key, ok, allowed in RULES:
        v = _get(cfg, key)
        if v is _MISSING:
            continue
        if not ok(v):
            raise ConfigError(f"{key}={v!r} is invalid: expected {allowed}")
    ablation = _get(cfg, "ablation")
    if ablation is not _MISSING and ablation is not None:
        unknown = sorted(set(ablation) - set(ABLATION_KEYS))
        if unknown:
            raise ConfigError(f"ablation keys {unknown} are unknown; allowed: {', '.join(ABLATION_KEYS)}")
    seeds = _get(cfg, "seeds")
    if seeds is not _MISSING and seeds is not None:
        seeds = list(seeds) if OmegaConf.is_list(seeds) or isinstance(seeds, (list, tuple)) else seeds
        if not isinstance(seeds, list) or not seeds or not all(_is_int(v) and v >= 0 for v in seeds) \
                or len(set(seeds)) != len(seeds):
            raise ConfigError(f"seeds={seeds!r} is invalid: expected a list of distinct non-negative integers "
                              f"(one ensemble member per seed), or null")
    eval_steps = _get(cfg, "eval.steps")
    if eval_steps is not _MISSING and eval_steps is not None:
        ks = list(eval_steps) if OmegaConf.is_list(eval_steps) or isinstance(eval_steps, (list, tuple)) else eval_steps
        if not (_is_int(ks) and ks >= 1) and not (isinstance(ks, list) and ks and all(_is_int(k) and k >= 1
                                                                                     for k in ks)):
            raise ConfigError(f"eval.steps={ks!r} is invalid: expected null (sampler.steps), a positive integer or "
                              f"a non-empty list of positive integers")
    T = _get(cfg, "diffusion.steps")
    for key in ("sampler.steps",):
        steps = _get(cfg, key)
        if steps is _MISSING or steps is None:
            continue
        if not _is_int(steps) or steps < 1:
            raise ConfigError(f"{key}={steps!r} is invalid: expected null (all steps) or a positive integer")
        if T is not _MISSING and steps > T:
            raise ConfigError(f"{key}={steps} is larger than the schedule: diffusion.steps={T}; allowed: 1..{T}")


def app_groups(app: str, *groups: str) -> str:
    """The config groups an entry point uses, one line each with its options (its ``--help``; the
    ``siddm_groups`` resolver): ``experiment`` lists the presets made for ``app`` (their files show the
    command ``<app> ... experiment=<name>``)."""
    import re

    lines = []
    for group in groups:
        folder = Path(CONF_DIR) / group
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if group == "experiment":
            options = [o for o in options
                       if re.search(rf"{re.escape(app)}\b[^\n]*\bexperiment={re.escape(o)}\b",
                                    (folder / f"{o}.yaml").read_text())]
        lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


OmegaConf.register_new_resolver("siddm_groups", lambda *args: app_groups(*args), replace=True)


def compose(overrides: Sequence[str] = (), config_name: str = "train", output_dir: str | Path | None = None,
            return_hydra_config: bool = False) -> DictConfig:
    """The config ``siddm-train`` (``config_name="train"``) or ``siddm-sample`` (``"sample"``) would run
    with these command-line ``overrides``, composed with Hydra's compose API outside an app (benchmarks,
    tests, notebooks). ``paths.output_dir`` is Hydra's run folder inside an app; give ``output_dir`` for
    anything that writes files."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = hydra_compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg
