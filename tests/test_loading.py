"""Unreadable checkpoints: each kind of bad file gets a CheckpointError that says what is wrong
(not a checkpoint / truncated / corrupt / foreign objects), never a raw unpickler traceback and
never torch's advice to load it with weights_only=False."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch

from siddm_lab.errors import CheckpointError
from siddm_lab.models.loading import allowed_targets, load_checkpoint, load_model


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


# ---------------------------------------------------------------- the stored config's targets
# A checkpoint's config is rebuilt with Hydra, which imports and calls whatever ``_target_`` names:
# only the targets the project's own configs use may be built from a checkpoint.

def _payload(path, marker, net=None, **sections):
    """A checkpoint that passes ``torch.load(weights_only=True)`` whose stored model config calls
    ``pathlib.Path.touch(marker)`` if it is instantiated."""
    if net is None:
        net = {"_target_": "pathlib.Path.touch", "self": str(marker)}
    model = {"_target_": "siddm_lab.models.DDPM", "net": net}
    torch.save({"state_dict": {}, "siddm_config": {"model": model, **sections}}, path)
    return path


def _touch(marker):
    return {"_target_": "pathlib.Path.touch", "_args_": [str(marker)]}


def test_a_target_outside_the_allow_list_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "touched"
    path = _payload(tmp_path / "payload.ckpt", marker)
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    message = str(e.value)
    assert "model.net._target_" in message and "pathlib.Path.touch" in message and str(path) in message, message
    assert not marker.exists()


@pytest.mark.parametrize("where,key", [
    ("args", "model.net._args_[0]._target_"),
    ("list_value", "model.net.hidden[1]._target_"),
    ("list_of_lists", "model.net.hidden[0][2]._target_"),
    ("section_not_built", "trainer.callbacks[0]._target_"),
])
def test_nested_targets_are_refused(tmp_path, where, key):
    marker = tmp_path / "touched"
    sections = {}
    net = {"_target_": "siddm_lab.nets.TimeMLP"}
    if where == "args":
        net["_args_"] = [_touch(marker)]
    elif where == "list_value":
        net["hidden"] = [1, _touch(marker)]
    elif where == "list_of_lists":
        net["hidden"] = [[1, 2, _touch(marker)]]
    else:  # load_model builds only the model, but the whole stored config is checked
        sections["trainer"] = {"_target_": "lightning.pytorch.Trainer", "callbacks": [_touch(marker)]}
    path = _payload(tmp_path / "payload.ckpt", marker, net, **sections)
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    message = str(e.value)
    assert key in message and "pathlib.Path.touch" in message, message
    assert not marker.exists()


@pytest.mark.parametrize("target", [5, ["pathlib.Path.touch"], {"a": 1}, None, True])
def test_a_target_that_is_not_a_string_is_refused(tmp_path, target):
    path = _payload(tmp_path / "payload.ckpt", tmp_path / "touched", {"_target_": target})
    with pytest.raises(CheckpointError, match=r"model\.net\._target_.*string"):
        load_model(path)


def test_interpolations_in_a_stored_config_are_refused(tmp_path):
    """siddm-train stores the resolved config; an interpolation would be resolved at build time and
    could yield a target the walk never saw (``${oc.create:...}``, ``_target_: ${x}``)."""
    marker = tmp_path / "touched"
    created = "${oc.create:'{_target_: pathlib.Path.touch, _args_: [" + str(marker) + "]}'}"
    for net, sections, key in [
        (created, {}, "model.net"),
        ({"_target_": "siddm_lab.nets.TimeMLP", "_args_": [{"_target_": "${x}", "_args_": [str(marker)]}]},
         {"x": "pathlib.Path.touch"}, "model.net._args_[0]._target_"),
    ]:
        path = _payload(tmp_path / "payload.ckpt", marker, net, **sections)
        with pytest.raises(CheckpointError) as e:
            load_model(path)
        assert key in str(e.value), str(e.value)
        assert not marker.exists()


def test_a_config_that_is_not_a_mapping_is_refused(tmp_path):
    """``OmegaConf.create`` parses a string as YAML, which would build a config the walk never saw."""
    marker = tmp_path / "touched"
    path = tmp_path / "payload.ckpt"
    yaml_text = f"model: {{_target_: pathlib.Path.touch, _args_: ['{marker}']}}"
    torch.save({"state_dict": {}, "siddm_config": yaml_text}, path)
    with pytest.raises(CheckpointError, match="siddm_config"):
        load_model(path)
    assert not marker.exists()


def test_a_config_of_other_than_plain_values_is_refused(tmp_path):
    looped = [1]
    looped.append(looped)
    for value, match in [(torch.zeros(2), r"Tensor at model\.net\.hidden"), (looped, r"itself at model\.net\.hidden")]:
        path = _payload(tmp_path / "payload.ckpt", tmp_path / "touched",
                        {"_target_": "siddm_lab.nets.TimeMLP", "hidden": value})
        with pytest.raises(CheckpointError, match=match):
            load_model(path)


def test_the_allow_list_is_the_targets_of_conf():
    import yaml

    from tests.conftest import CONF_DIR

    def targets(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "_target_":
                    yield v
                yield from targets(v)
        elif isinstance(node, list):
            for v in node:
                yield from targets(v)

    used = {t for p in CONF_DIR.rglob("*.yaml") for t in targets(yaml.safe_load(p.read_text()))}
    assert {"siddm_lab.models.DDPM", "siddm_lab.nets.UNet", "torch.optim.Adam"} <= used
    allowed = allowed_targets()
    assert used <= allowed
    for target in ("torch.save", "torch.load", "torch.hub.load", "os.system", "subprocess.run", "builtins.exec",
                   "pathlib.Path.touch", "torch.optim", "siddm_lab"):
        assert target not in allowed, target


def _options(group):
    from tests.conftest import CONF_DIR

    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


_TOY_DATA = ["dataset.n_train=256", "dataset.n_val=64", "dataset.n_eval=64", "dataset.batch_size=64"]
_GAN_TOY = ["net=mlp_gen", "schedule=ddgan_vp", "diffusion.steps=4", "net.hidden=32", "discriminator.hidden=32",
            *_TOY_DATA]
_GAN_IMAGES = ["dataset=digits", "net=unet_gen", "schedule=ddgan_vp", "discriminator=conv", "diffusion.steps=4",
               "net.ch=32", "net.channel_mult=[1,2]", "net.attn_resolutions=[]", "discriminator.ch=32",
               "discriminator.channel_mult=[1,2]", "model.nz=8", "dataset.batch_size=16"]
# A tiny run of each model option that the toy default below does not fit.
_RECIPES = {
    "siddm": _GAN_TOY,
    "ddgan": _GAN_TOY,
    "siddm_released": ["experiment=siddm_toy_released", "net.hidden=32", "discriminator.hidden=32", *_TOY_DATA,
                       "eval.steps=null", "eval.batch_size=64"],
    "siddm_image": _GAN_IMAGES,
    "ddgan_image": _GAN_IMAGES,
}
# Every model option (conf/model/gan.yaml is the base of siddm and ddgan, not a model of its own).
MODEL_OPTIONS = [m for m in _options("model") if m != "gan"]


@pytest.mark.parametrize("name", MODEL_OPTIONS)
def test_a_checkpoint_of_every_model_option_loads(tmp_path, name):
    from tests.helpers import run_train

    recipe = _RECIPES.get(name, ["diffusion.steps=50", "net.hidden=32", "discriminator.hidden=32", *_TOY_DATA])
    run_train([f"model={name}", *recipe, "trainer.max_steps=2", "trainer.val_check_interval=2",
               "callbacks.evaluation.num_samples=0", "eval.num_samples=16"], tmp_path)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    model, cfg = load_model(ckpt)
    assert cfg.model._target_ == torch.load(ckpt, weights_only=True)["siddm_config"]["model"]["_target_"]
    assert model.global_step_at_save == 2


def test_a_checkpoint_of_the_earlier_layout_loads_with_the_same_weights(tmp_path):
    """Checkpoints written before the sampler group and the generator base (``model.sampling`` in the
    config, the denoiser saved as ``net.*``) load into today's DDPM with the same weights."""
    from tests.helpers import run_train

    run_train(["diffusion.steps=20", "net.hidden=16", *_TOY_DATA, "trainer.max_steps=2",
               "trainer.val_check_interval=2",
               "callbacks.evaluation.num_samples=0", "eval.num_samples=16"], tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    old = dict(ckpt)
    old["state_dict"] = {k.removeprefix("generator."): v for k, v in ckpt["state_dict"].items()}
    assert any(k.startswith("net.") for k in old["state_dict"])
    old["siddm_config"]["model"]["sampling"] = {"name": "ddpm", "steps": None, "batch_size": 1000}
    torch.save(old, tmp_path / "old.ckpt")
    model, _ = load_model(tmp_path / "old.ckpt")
    for k, v in ckpt["state_dict"].items():
        torch.testing.assert_close(model.state_dict()[k], v)
