"""DDGAN's trained weights (NVlabs/denoising-diffusion-gan) as a siddm_lab checkpoint: the library side of
``siddm-import ddgan``.

The reference code saves two kinds of files (train_ddgan.py):

* ``netG_<epoch>.pth``: the generator's ``state_dict`` (under DDP's ``module.`` prefix). With ``--use_ema`` (its
  recipes, and the released checkpoints) the EMA weights are swapped in before it is saved, so these ARE the EMA
  weights; the file cannot tell whether the run used EMA.
* ``content.pth`` (``--save_content``): ``netG_dict`` (the generator's RAW weights), ``netD_dict``, the optimizers
  and schedulers, ``epoch``, ``global_step`` and ``args`` (its argparse Namespace). The generator's EMA lives in
  its optimizer's state: ``optimizerG['state'][i]['ema']`` averages the i-th parameter in ``netG_dict`` order.

Either is read with ``torch.load(weights_only=True)`` (only ``argparse.Namespace`` is allowed besides tensors and
plain containers, for content.pth's ``args``), so a file from elsewhere never runs code. The weights are mapped
onto siddm_lab's ``NCSNpp`` (and, from content.pth, ``DDGANDiscriminator``) with ``from_ddgan_state_dict``, into
the DDGAN model that ``siddm-train model=ddgan_image schedule=ddgan_vp`` builds with the recipe's and the user's
overrides. The checkpoint holds the resolved run config, ``state_dict`` (the EMA weights where there are any),
``current_model_state`` (content.pth's raw weights, when its EMA was taken) and ``siddm_import`` (where the
weights came from). Without a discriminator in the file (netG_*.pth) the checkpoint holds the generator only;
``load_model`` builds the discriminator freshly initialised, and a fine-tuning run trains its own
(``siddm-train init.ckpt=...``).
"""

from __future__ import annotations

import argparse
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import OmegaConf, open_dict

from siddm_lab.errors import CheckpointError, ConfigError

WEIGHTS = ("ema", "raw")
# DDGAN's released recipes (its README's train/test commands) as siddm_lab overrides, by its --dataset names
RECIPES: dict[str, list[str]] = {
    # --num_channels_dae 128 --ch_mult 1 2 2 2 --nz 100 --z_emb_dim 256 --n_mlp 4 --num_timesteps 4, ngf 64
    "cifar10": ["dataset=cifar10", "net=ncsnpp_gen", "discriminator=ddgan_small", "diffusion.steps=4"],
    # --image_size 256 --num_channels_dae 64 --ch_mult 1 1 2 2 4 4 --num_timesteps 2 (n_mlp 3, nz 100)
    "celeba_256": ["dataset=celebahq256", "net=ncsnpp_gen_256", "discriminator=ddgan_large", "diffusion.steps=2"],
    # LSUN church: as celeba_256 with --num_timesteps 4; images from a folder (paths.data_dir)
    "lsun": ["dataset=image_folder", "dataset.name=lsun_church", "dataset.image_size=256", "net=ncsnpp_gen_256",
             "discriminator=ddgan_large", "diffusion.steps=4"],
}
# dataset= override -> the recipe it implies when --recipe is not given
RECIPE_OF_DATASET = {"cifar10": "cifar10", "celebahq256": "celeba_256"}
BASE_OVERRIDES = ["model=ddgan_image", "schedule=ddgan_vp", "task_name=ddgan_import"]
NETS = ("ncsnpp_gen", "ncsnpp_gen_256")

# content.pth's args -> the siddm_lab key they set (net.* keys are the generator's constructor arguments)
ARG_KEYS = {
    "num_timesteps": "diffusion.steps", "beta_min": "schedule.beta_min", "beta_max": "schedule.beta_max",
    "use_geometric": "schedule.geometric", "nz": "model.nz", "num_channels": "dataset.channels",
    "image_size": "dataset.image_size", "centered": "net.centered", "not_use_tanh": "net.not_use_tanh",
    **{k: f"net.{k}" for k in ("num_channels_dae", "ch_mult", "num_res_blocks", "attn_resolutions",
                               "resamp_with_conv", "fir", "fir_kernel", "skip_rescale", "resblock_type",
                               "progressive", "progressive_input", "progressive_combine", "z_emb_dim", "n_mlp")},
}
DISCRIMINATOR_ARG_KEYS = {"ngf": "discriminator.ngf", "t_emb_dim": "discriminator.t_emb_dim"}
_PLAIN = (str, int, float, bool, type(None))


# ---------------------------------------------------------------------------------------------- reading
class DDGANFile:
    """What a DDGAN file holds, mapped to nothing yet: ``generator`` (reference keys, no ``module.``),
    ``raw_generator`` (content.pth's netG_dict when its EMA was taken), ``discriminator`` (or None), ``args``
    (content.pth's, as a plain dict, or None), ``kind`` (netG | content), ``weights`` (a sentence on which
    weights were taken), ``epoch`` and ``global_step`` (None where unknown)."""

    def __init__(self, path: Path, kind: str, generator: dict, weights: str, raw_generator: dict | None = None,
                 discriminator: dict | None = None, args: dict | None = None, epoch: int | None = None,
                 global_step: int | None = None):
        self.path, self.kind, self.generator, self.weights = path, kind, generator, weights
        self.raw_generator, self.discriminator, self.args = raw_generator, discriminator, args
        self.epoch, self.global_step = epoch, global_step


def _strip(state: dict) -> dict:
    return {k.removeprefix("module."): v for k, v in state.items()}


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and torch.is_tensor(v)
                                                       for k, v in obj.items())


def _net_kind(state: dict) -> str | None:
    keys = list(_strip(state))
    if any(k.startswith("all_modules.") for k in keys) and any(k.startswith("z_transform.") for k in keys):
        return "generator"
    if any(k.startswith("t_embed.") for k in keys) and any(k.startswith("end_linear.") for k in keys):
        return "discriminator"
    return None


EXPECTED = ("DDGAN's netG_<epoch>.pth (the generator's state dict: all_modules.* and z_transform.* keys) or its "
            "content.pth (a dict with netG_dict)")


def _load(path: Path):
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; expected {EXPECTED}, e.g. "
                              f"saved_info/dd_gan/cifar10/<exp>/netG_1200.pth")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read {path}: the file is empty")
    try:
        # a plain pickle (not a torch archive) makes torch warn about its protocol before it fails: the error
        # below says what the file is
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's unpickler raises anything on a foreign file
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise CheckpointError(f"refusing to read {path}: besides tensors it holds a pickled {found.group(1)!r} "
                                  f"object, which could run code; DDGAN's files hold tensors and plain containers "
                                  f"(content.pth also its argparse Namespace)") from e
        raise CheckpointError(f"cannot read {path}: not a PyTorch file, or a truncated or corrupt one "
                              f"({type(e).__name__}); expected {EXPECTED}") from e


def _plain_args(args) -> dict | None:
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if not isinstance(args, dict):
        return None
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in args.items()
            if isinstance(v, _PLAIN) or (isinstance(v, (list, tuple)) and all(isinstance(x, _PLAIN) for x in v))}


def _ema_from_optimizer(generator: dict, optimizer, path: Path) -> dict | None:
    """The generator's EMA from train_ddgan.py's EMA optimizer state (None when the run had no EMA)."""
    state = optimizer.get("state") if isinstance(optimizer, dict) else None
    if not isinstance(state, dict):
        return None
    keys = list(generator)
    if not all(isinstance(state.get(i), dict) and torch.is_tensor(state[i].get("ema")) for i in range(len(keys))):
        return None
    ema = {}
    for i, key in enumerate(keys):
        value = state[i]["ema"]
        if value.shape != generator[key].shape:
            raise CheckpointError(f"{path}: optimizerG's EMA of parameter {i} has shape {tuple(value.shape)} but "
                                  f"netG_dict's {i}-th entry {key} has {tuple(generator[key].shape)}; this is not "
                                  f"the layout train_ddgan.py saves")
        ema[key] = value
    return ema


def _count(v) -> int | None:
    """content.pth's epoch / global_step as an int (None if absent or not a count)."""
    if torch.is_tensor(v) and v.numel() == 1:
        v = v.item()
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() else None


def read_ddgan(path, weights: str = "ema") -> DDGANFile:
    """Read a DDGAN file safely and say what it holds (see the module docstring); wrong kinds of file are
    refused with a CheckpointError naming what was found and what is expected."""
    if weights not in WEIGHTS:
        raise ConfigError(f"weights={weights!r} is unknown; allowed: {', '.join(WEIGHTS)}")
    path = Path(path)
    obj = _load(path)
    if _is_state_dict(obj):
        kind = _net_kind(obj)
        if kind == "discriminator":
            raise CheckpointError(f"{path} holds a DDGAN discriminator's weights (netD: t_embed.*, end_linear.*); "
                                  f"the import needs the generator's: {EXPECTED}")
        if kind is None:
            raise CheckpointError(f"{path} holds the state dict of another network (keys {list(obj)[:4]} ...); "
                                  f"expected {EXPECTED}")
        if weights == "raw":
            raise ConfigError(f"--weights raw: {path} holds one set of generator weights (train_ddgan.py saves "
                              f"netG_<epoch>.pth with its EMA swapped in when it trains with --use_ema); the raw "
                              f"weights are in content.pth's netG_dict")
        found = re.fullmatch(r"netG_(\d+)\.pth", path.name)
        return DDGANFile(path, "netG", _strip(obj), "netG_<epoch>.pth as saved (the EMA weights when the run used "
                         "--use_ema)", epoch=int(found.group(1)) if found else None)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict; expected {EXPECTED}")
    if "netG_dict" in obj:
        generator = obj["netG_dict"]
        if not _is_state_dict(generator) or _net_kind(generator) != "generator":
            raise CheckpointError(f"{path}: its netG_dict is not a DDGAN generator's state dict; expected {EXPECTED}")
        generator = _strip(generator)
        discriminator = obj.get("netD_dict")
        discriminator = _strip(discriminator) if _is_state_dict(discriminator) and \
            _net_kind(discriminator) == "discriminator" else None
        ema = _ema_from_optimizer(generator, obj.get("optimizerG"), path)
        args = _plain_args(obj.get("args"))
        common = dict(discriminator=discriminator, args=args, epoch=_count(obj.get("epoch")),
                      global_step=_count(obj.get("global_step")))
        if weights == "ema":
            if ema is None:
                raise CheckpointError(f"{path} holds no EMA of the generator (its optimizerG has no 'ema' state: "
                                      f"trained without --use_ema); import its raw weights with --weights raw")
            return DDGANFile(path, "content", ema, "content.pth: the generator's EMA (optimizerG's 'ema' state); "
                             "raw netG_dict as current_model_state", raw_generator=generator, **common)
        return DDGANFile(path, "content", generator, "content.pth: the raw netG_dict", **common)
    if "state" in obj and "param_groups" in obj:
        raise CheckpointError(f"{path} holds an optimizer's state (state, param_groups), not weights; expected "
                              f"{EXPECTED}")
    if "state_dict" in obj:
        raise CheckpointError(f"{path} is a Lightning checkpoint ('state_dict'), not DDGAN's"
                              + ("; it is siddm_lab's own: sample it with siddm-sample ckpt=..." if "siddm_config"
                                 in obj else "") + f"; expected {EXPECTED}")
    raise CheckpointError(f"{path} is not a DDGAN file: a dict with keys {sorted(map(str, obj))[:6]}; expected "
                          f"{EXPECTED}")


# ---------------------------------------------------------------------------------------------- checks
def generator_facts(state: dict) -> dict:
    """What a reference generator's weights fix, under NCSNpp's argument names: ``in_channels`` and
    ``num_channels_dae`` (its first convolution), ``cond_dim`` (nz), ``z_emb_dim`` and ``n_mlp`` (the latent's
    mapping network). Empty where the layout is not the positional-embedding NCSN++ of DDGAN."""
    facts: dict = {}
    conv_in = state.get("all_modules.2.weight")
    if conv_in is not None and conv_in.dim() == 4:
        facts["num_channels_dae"], facts["in_channels"] = int(conv_in.shape[0]), int(conv_in.shape[1])
    first = state.get("z_transform.1.weight")
    if first is not None and first.dim() == 2:
        facts["z_emb_dim"], facts["cond_dim"] = int(first.shape[0]), int(first.shape[1])
        facts["n_mlp"] = sum(1 for k in state if re.fullmatch(r"z_transform\.\d+\.weight", k)) - 1
    return facts


# where a user sets each of NCSNpp's arguments
USER_KEY = {"in_channels": "dataset.channels", "image_size": "dataset.image_size", "cond_dim": "model.nz"}


def _user_key(arg: str) -> str:
    return USER_KEY.get(arg, f"net.{arg}")


def check_generator_config(facts: dict, net_cfg: dict, path: Path) -> None:
    """What the weights fix (``generator_facts``) against the net the config builds, named by the keys a user
    sets (``dataset.channels``, ``model.nz``, ``net.*``)."""
    wrong = {k: v for k, v in facts.items() if net_cfg.get(k) != v}
    if wrong:
        channels = (f"; a dataset of {wrong['in_channels']}-channel images (e.g. dataset=cifar10 for 3)"
                    if "in_channels" in wrong else "")
        raise ConfigError(
            f"the generator weights of {path} do not fit the config: "
            + "; ".join(f"{_user_key(k)}={net_cfg.get(k)!r} but the weights have {v!r}" for k, v in wrong.items())
            + ". Set the config to DDGAN's run: " + " ".join(f"{_user_key(k)}={v}" for k, v in wrong.items())
            + channels + f"; DDGAN's released checkpoints: --recipe {' | '.join(RECIPES)}")


def check_args(args: dict, cfg, with_discriminator: bool, path: Path) -> None:
    """content.pth's ``args`` against the config: every setting that DDGAN's run recorded and that the config
    sets must agree (the schedule and T cannot be read from the weights)."""
    keys = dict(ARG_KEYS, **(DISCRIMINATOR_ARG_KEYS if with_discriminator else {}))
    wrong = []
    for arg, key in keys.items():
        if arg not in args:
            continue
        ours = OmegaConf.select(cfg, key, default=None)
        ours = OmegaConf.to_container(ours) if OmegaConf.is_config(ours) else ours
        theirs = args[arg]
        if arg == "attn_resolutions" or arg == "ch_mult" or arg == "fir_kernel":
            theirs = list(theirs) if isinstance(theirs, (list, tuple)) else [theirs]
            ours = list(ours) if isinstance(ours, (list, tuple)) else ours
            same = ours is not None and [float(x) for x in ours] == [float(x) for x in theirs]
        elif isinstance(theirs, float) or isinstance(ours, float):
            same = isinstance(ours, (int, float)) and abs(float(ours) - float(theirs)) <= 1e-12 * max(1, abs(theirs))
        else:
            same = ours == theirs
        if not same:
            wrong.append(f"{key}={ours!r} but DDGAN's run used --{arg} {theirs!r}")
    if args.get("embedding_type", "positional") != "positional":
        wrong.append(f"DDGAN's run used --embedding_type {args['embedding_type']}; siddm_lab's NCSNpp has the "
                     f"positional embedding only")
    if wrong:
        raise ConfigError(f"{path} was trained with other settings than the config: " + "; ".join(wrong)
                          + ". Set the config's keys to DDGAN's values (its content.pth records them)")


# ---------------------------------------------------------------------------------------------- import
def import_config(overrides: Sequence[str] = (), recipe: str | None = None, output_dir=None):
    """(config, recipe, choices): the run config ``siddm-train`` would compose with BASE_OVERRIDES, the recipe's
    overrides and ``overrides`` (later ones win), resolved with ``paths.output_dir`` = ``output_dir``."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from siddm_lab.config import compose, validate

    overrides = list(overrides)
    if recipe is None:
        named = [o.split("=", 1)[1] for o in overrides if o.startswith("dataset=")]
        recipe = RECIPE_OF_DATASET.get(named[-1], "cifar10") if named else "cifar10"
    if recipe not in RECIPES:
        raise ConfigError(f"--recipe {recipe!r} is unknown; allowed: {', '.join(RECIPES)} (DDGAN's --dataset names)")
    for o in overrides:
        if "=" not in o or o.startswith(("-", "~")):
            raise ConfigError(f"{o!r} is not a config override: expected key=value (e.g. dataset=cifar10, "
                              f"net.num_channels_dae=64, diffusion.steps=2)")
    try:
        cfg = compose([*BASE_OVERRIDES, *RECIPES[recipe], *overrides], "train", output_dir, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"the overrides {overrides} do not compose: {str(e).splitlines()[0]}") from e
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    validate(cfg)
    return cfg, recipe, choices


GENERATOR_TARGET = "siddm_lab.nets.NCSNpp"
DISCRIMINATOR_TARGETS = ("siddm_lab.nets.DDGANDiscriminatorSmall", "siddm_lab.nets.DDGANDiscriminatorLarge")


def _check_config(cfg, choices: dict) -> None:
    """The config builds DDGAN (its objective, NCSN++, one of its discriminators) on an image dataset."""
    if not str(cfg.model.get("objective", {}).get("_target_", "")).endswith(".DDGANLoss"):
        raise ConfigError(f"model={choices.get('model')}: the import writes a DDGAN (model=ddgan_image); to train "
                          f"its generator as SIDDM, start a siddm-train run from the imported checkpoint with "
                          f"init.ckpt=<it> model=siddm_image")
    if cfg.get("schedule", {}).get("name") != "ddgan_vp":
        raise ConfigError(f"schedule={choices.get('schedule')}: DDGAN's process is schedule=ddgan_vp (its "
                          f"--beta_min / --beta_max as schedule.beta_min / beta_max, --use_geometric as "
                          f"schedule.geometric=true, --num_timesteps as diffusion.steps)")
    if cfg.model.generator.get("_target_") != GENERATOR_TARGET:
        raise ConfigError(f"net={choices.get('net')} is not DDGAN's generator; allowed: net={' | '.join(NETS)} "
                          f"(NCSN++, with net.* overrides for other sizes)")
    if cfg.model.discriminator.get("_target_") not in DISCRIMINATOR_TARGETS:
        raise ConfigError(f"discriminator={choices.get('discriminator')} is not DDGAN's; allowed: "
                          f"discriminator=ddgan_small (32 px) | ddgan_large (256 px)")
    if cfg.dataset.get("channels") is None or cfg.dataset.get("image_size") is None:
        raise ConfigError(f"dataset={choices.get('dataset')} is not an image dataset (no dataset.channels / "
                          f"dataset.image_size); DDGAN's generators make images: e.g. dataset=cifar10")


def import_ddgan(src, dst, overrides: Sequence[str] = (), recipe: str | None = None, weights: str = "ema",
                 force: bool = False, with_discriminator: bool = True) -> dict:
    """Write the siddm_lab checkpoint ``dst`` of DDGAN's file ``src`` (see the module docstring); return a
    summary. ``with_discriminator=False`` leaves content.pth's discriminator out."""
    from hydra.utils import instantiate

    from siddm_lab.models.export import sha256
    from siddm_lab.models.loading import check_stored_config
    from siddm_lab.nets import from_ddgan_state_dict

    src, dst = Path(src), Path(dst)
    if dst.exists() and not force:
        raise CheckpointError(f"{dst} exists; give another output path, or --force to overwrite it")
    if dst.resolve() == src.resolve():
        raise CheckpointError(f"the output {dst} is the input file; give another output path")
    found = read_ddgan(src, weights)
    cfg, recipe, choices = import_config(overrides, recipe, output_dir=dst.resolve().parent)
    _check_config(cfg, choices)
    discriminator = found.discriminator if with_discriminator else None
    if found.args is not None:
        check_args(found.args, cfg, discriminator is not None, src)
    net_cfg = OmegaConf.to_container(cfg.model.generator, resolve=True)
    check_generator_config(generator_facts(found.generator), net_cfg, src)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        model = instantiate(cfg.model)
    try:
        gen = from_ddgan_state_dict(found.generator, model.generator)
        raw_gen = from_ddgan_state_dict(found.raw_generator, model.generator) if found.raw_generator else None
    except CheckpointError as e:
        shown = {k: net_cfg.get(k) for k in ("image_size", "ch_mult", "num_res_blocks", "attn_resolutions",
                                             "resblock_type", "progressive", "progressive_input")}
        raise CheckpointError(
            f"the generator weights of {src} do not fit net={choices.get('net')} as configured "
            f"({', '.join(f'{k} {v}' for k, v in shown.items())}): {e}. Build the net DDGAN's run built: its released "
            f"checkpoints with --recipe {' | '.join(RECIPES)}; another run with the net.* keys of its train_ddgan.py "
            f"flags") from e
    disc = None
    if discriminator is not None:
        try:
            disc = from_ddgan_state_dict(discriminator, model.discriminator)
        except CheckpointError as e:
            raise CheckpointError(
                f"the discriminator weights of {src} (netD_dict) do not fit discriminator="
                f"{choices.get('discriminator')} (ngf {cfg.discriminator.get('ngf')}, t_emb_dim "
                f"{cfg.discriminator.get('t_emb_dim')}): {e}. Choose the one DDGAN's run used (ddgan_small for 32 px, "
                f"ddgan_large for 256 px, discriminator.ngf / t_emb_dim = its --ngf / --t_emb_dim), or import the "
                f"generator alone with --generator-only") from e

    parts = ["generator"] + (["discriminator"] if disc is not None else [])
    own = model.state_dict()
    rest = {k: v for k, v in own.items() if not k.startswith(("generator.", "discriminator."))}

    def state_of(generator: dict) -> dict:
        out = {**rest, **{f"generator.{k}": v.float().contiguous() for k, v in generator.items()}}
        if disc is not None:
            out.update({f"discriminator.{k}": v.float().contiguous() for k, v in disc.items()})
        return out

    state = state_of(gen)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("discriminator.") for k in missing) and (disc is None or not missing)
    config = OmegaConf.to_container(cfg, resolve=True)
    check_stored_config(config, dst)
    channels, size = int(cfg.dataset.channels), int(cfg.dataset.image_size)
    info = {"source": "ddgan", "file": str(src.resolve()), "sha256": sha256(src), "file_kind": found.kind,
            "weights": found.weights, "parts": parts, "epoch": found.epoch, "ddgan_global_step": found.global_step,
            "recipe": recipe, "overrides": list(overrides), "ddgan_args": found.args}
    ckpt = {"state_dict": state, "siddm_config": config, "data_shape": [channels, size, size],
            "global_step": int(found.global_step or 0), "siddm_train_seconds": 0.0, "siddm_import": info}
    if raw_gen is not None:
        ckpt["current_model_state"] = state_of(raw_gen)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    torch.save(ckpt, tmp)
    os.replace(tmp, dst)
    return {"ckpt": str(dst), "file": str(src), "file_kind": found.kind, "weights": found.weights, "parts": parts,
            "recipe": recipe, "net": choices.get("net"), "dataset": choices.get("dataset"),
            "T": int(model.diffusion.num_timesteps), "nz": int(model.nz), "data_shape": [channels, size, size],
            "generator_parameters": sum(p.numel() for p in model.generator.parameters()),
            "epoch": found.epoch, "ddgan_global_step": found.global_step}
