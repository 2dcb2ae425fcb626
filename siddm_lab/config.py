"""Validation of a composed config: fail before any work, naming the key, value and what is allowed.

Hydra already rejects unknown group options ("Could not find 'schedule/foo'. Available options:
...") and unknown keys (struct mode). The objects a run builds from the config (the process, the samplers,
the datamodule, the nets, the objective, the model) check their own arguments when they are built, before
any file is written (``siddm_lab.training.build_run``, ``siddm_lab.sampling.sample_checkpoint``), with a
message that ``named_as_set`` words under the key the user sets. What is left here: the keys that no
object of the package receives (``seed``, ``threads``, siddm-sample's ``num_samples`` / ``batch_size``,
``eval.*``, the optimizers' ``lr`` that torch receives only when training starts, the Trainer's
``max_steps`` / ``val_check_interval`` whose Lightning messages are poor), the rules over several keys
(``ablation`` key names), keys that moved, and interpolations that do not resolve.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from siddm_lab.errors import ConfigError, SiddmError

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


def _finite_positive(v) -> bool:
    return _is_num(v) and 0 < v < float("inf")


# key, predicate, description of what is allowed. Keys absent from a config are skipped. Only keys that no
# object of the package receives (module docstring): the others are checked by the object they configure.
Rule = tuple[str, Callable[[Any], bool], str]
RULES: list[Rule] = [
    ("seed", lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    ("threads", lambda v: v == "auto" or (_is_int(v) and v >= 1), "'auto' or a positive integer (torch CPU threads)"),
    # siddm-sample's sample count and batch
    ("num_samples", lambda v: _is_int(v) and v >= 1, "a positive integer"),
    ("batch_size", lambda v: _is_int(v) and v >= 1, "a positive integer"),
    # torch.optim receives these in configure_optimizers, once training starts (and takes lr=0 or inf)
    ("model.optimizer.lr", _finite_positive, "a finite positive number"),
    ("model.optimizer_g.lr", _finite_positive, "a finite positive number"),
    ("model.optimizer_d.lr", _finite_positive, "a finite positive number"),
    ("distill.optimizer.lr", _finite_positive, "a finite positive number"),
    ("trainer.max_steps", lambda v: _is_int(v) and (v == -1 or v >= 1), "a positive integer (or -1: no limit)"),
    # Training is counted in iterations (check_val_every_n_epoch is null), where Lightning takes only an integer
    # (a fraction of an epoch is refused); it is also the period of the checkpoints.
    ("trainer.val_check_interval", lambda v: _is_int(v) and v >= 1,
     "a positive integer (iterations between validations and checkpoints)"),
    ("eval.num_samples", lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    ("eval.batch_size", lambda v: _is_int(v) and v >= 1, "a positive integer"),
    ("eval.seed", lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
]


# Keys that moved, with where they are now (a config or command line of an earlier version names them).
MOVED = {"model.eval_num_samples": "callbacks.evaluation.num_samples",
         "distill.eval_num_samples": "callbacks.evaluation.num_samples"}


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid value of a key that no object receives, a rule over several
    keys, a key that moved, or an interpolation that does not resolve (module docstring)."""
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
    # the final evaluation's step counts: each reaches the sampler as its `steps` (training.eval_samplers)
    eval_steps = _get(cfg, "eval.steps")
    if eval_steps is not _MISSING and eval_steps is not None:
        ks = list(eval_steps) if OmegaConf.is_list(eval_steps) or isinstance(eval_steps, (list, tuple)) else eval_steps
        if not (_is_int(ks) and ks >= 1) and not (isinstance(ks, list) and ks and all(_is_int(k) and k >= 1
                                                                                     for k in ks)):
            raise ConfigError(f"eval.steps={ks!r} is invalid: expected null (sampler.steps), a positive integer or "
                              f"a non-empty list of positive integers")


# A simple interpolation of another key (``${model.nz}``; not a relative one, nor a resolver call).
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")
_LEADING_KEY = re.compile(r"([A-Za-z_][\w.]*)=")


def _source_key(raw: dict, key: str) -> str | None:
    """The key whose value ``key`` takes by interpolation in the unresolved config ``raw`` (followed through a
    chain), or None."""
    source, seen = None, {key}
    while True:
        node = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        m = _INTERPOLATION.fullmatch(node) if isinstance(node, str) else None
        if m is None or m.group(1) in seen:
            return source
        key = source = m.group(1)
        seen.add(key)


def named_as_set(cfg: DictConfig | dict, error: ConfigError) -> ConfigError:
    """``error`` in the words of the key the user sets. An object names its own argument
    (``net.cond_dim='abc' is invalid: ...``, ``model.objective.lambda_afd=-1 is invalid: ...``); where the
    config gives that key its value by interpolation (``net.cond_dim: ${model.nz}``, ``lambda_afd:
    ${ablation.lambda_afd}``), the message names the key set and the one the value reached:
    ``model.nz='abc' is invalid: ... (given to net.cond_dim)``. Messages about one value only
    (``KEY=VALUE is invalid`` / ``is unknown``); any other is returned as it is."""
    text = str(error)
    m = _LEADING_KEY.match(text)
    if m is None or not re.match(r"(\[[^]]*\]|'[^']*'|[^ ]*) is (invalid|unknown)\b", text[m.end():]):
        return error
    key = m.group(1)
    raw = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    source = _source_key(raw, key)
    if source is None:
        return error
    return ConfigError(f"{source}={text[m.end():]} (given to {key})")


def _config_error(e: BaseException) -> ConfigError | None:
    """``e`` if it is a ConfigError, else the ConfigError it wraps (Hydra's InstantiationException)."""
    while e is not None and not isinstance(e, SiddmError):
        e = e.__cause__
    return e if isinstance(e, ConfigError) else None


@contextmanager
def keys_as_set(cfg: DictConfig) -> Iterator[None]:
    """Build objects from ``cfg`` in this block: a ConfigError they raise, also inside Hydra's
    InstantiationException, is raised as a ConfigError naming the key the user sets (``named_as_set``)."""
    from hydra.errors import InstantiationException

    raw = OmegaConf.to_container(cfg, resolve=False)  # as set: instantiate resolves some interpolations in place
    try:
        yield
    except (ConfigError, InstantiationException) as e:
        found = _config_error(e)
        if found is None:
            raise
        renamed = named_as_set(raw, found)
        if renamed is e:
            raise
        raise (ConfigError(str(renamed)) if renamed is found else renamed) from e


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

MAX_DIRNAME = 160  # characters of a sweep job's folder name taken from its overrides (file systems allow 255 bytes)


def short_dirname(name: str, limit: int = MAX_DIRNAME) -> str:
    """A sweep job's folder name from its overrides (``hydra.job.override_dirname``): as it is up to ``limit``
    characters, else its first ones and a hash of the whole (distinct jobs keep distinct folders; the job's
    overrides are in its config.yaml and .hydra/overrides.yaml)."""
    name = str(name)
    if len(name.encode()) <= limit:
        return name
    import hashlib

    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return name.encode()[: limit - 12].decode(errors="ignore") + "~" + digest


OmegaConf.register_new_resolver("siddm_dirname", short_dirname, replace=True)


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
