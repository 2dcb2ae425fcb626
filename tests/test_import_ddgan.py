"""siddm-import ddgan: DDGAN's netG_<epoch>.pth / content.pth as a siddm_lab checkpoint. The narrow reference
generator of tests/data/ddgan_reference (``biggan_residual``: 3 channels, 16 px, nz 8) is imported with overrides
that build the same net; its generator chain is compared with what the reference's own sampling loop computed
(sampling.pt, made by make_sampling_fixture.py from the reference code); wrong files, datasets and configs are
refused; the imported DDGAN is fine-tuned as SIDDM with ``init.ckpt``."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from siddm_lab.cli.importer import main as import_main
from siddm_lab.diffusion import GeneratorChain, RandomSource
from siddm_lab.errors import CheckpointError
from siddm_lab.models.ddgan_import import RECIPES, import_config, import_ddgan
from siddm_lab.models.loading import load_model
from siddm_lab.nets import NCSNpp, from_ddgan_state_dict
from tests.helpers import run_train

DATA = Path(__file__).parent / "data" / "ddgan_reference"
SAMPLING = DATA / "sampling.pt"
# siddm_lab's overrides for the reference's narrow generator (ref_args of fixture.pt's biggan_residual), with
# DDGAN's discriminator_small narrowed as fixture.pt's (ngf 4, t_emb_dim 16)
NARROW = ["dataset=cifar10", "dataset.image_size=16", "net.num_channels_dae=16", "net.ch_mult=[1,2]",
          "net.num_res_blocks=1", "net.attn_resolutions=[8]", "model.nz=8", "net.z_emb_dim=16", "net.n_mlp=2",
          "discriminator.ngf=4", "discriminator.t_emb_dim=16", "dataset.metrics.names=[]"]


@pytest.fixture(scope="module")
def ref():
    fixture = torch.load(DATA / "fixture.pt", weights_only=True)
    sampling = torch.load(SAMPLING, weights_only=True)
    case = fixture["generators"][sampling["generator"]]
    return {"case": case, "generator": {k: v.float() for k, v in case["state_dict"].items()},
            "small": fixture["discriminators"]["small"], "sampling": sampling}


def ddp(state: dict) -> dict:
    """As train_ddgan.py saves a net trained under DDP."""
    return {"module." + k: v for k, v in state.items()}


@pytest.fixture(scope="module")
def netg(ref, tmp_path_factory):
    path = tmp_path_factory.mktemp("ddgan") / "netG_1200.pth"
    torch.save(ddp(ref["generator"]), path)
    return path


@pytest.fixture(scope="module")
def imported(netg, tmp_path_factory):
    """The narrow netG imported with T=4 (CIFAR-10's) and T=2 (CelebA-HQ's)."""
    out = tmp_path_factory.mktemp("imported")
    paths = {}
    for T in (4, 2):
        paths[T] = out / f"ddgan_T{T}.ckpt"
        import_ddgan(netg, paths[T], NARROW + [f"diffusion.steps={T}"])
    return paths


def content_file(ref, path: Path, ema: bool = True, **args) -> dict:
    """A content.pth as train_ddgan.py --save_content writes it (its keys; the generator's EMA in the EMA
    optimizer's state, parameter i's average at state[i]['ema'], the layout make_sampling_fixture.py checks
    against the reference's EMA class): the fixture's weights as the EMA, the same plus noise as the raw
    netG_dict, Discriminator_small's fixture weights as netD_dict."""
    g = torch.Generator().manual_seed(0)
    ema_weights = ref["generator"]
    raw = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in ema_weights.items()}
    state = {i: {"step": torch.tensor(10.0), "exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.zeros_like(v),
                 **({"ema": v.clone()} if ema else {})} for i, v in enumerate(ema_weights.values())}
    ref_args = {**ref["case"]["ref_args"], "num_timesteps": 4, "beta_min": 0.1, "beta_max": 20.0,
                "use_geometric": False, "ngf": 4, "t_emb_dim": 16, "dataset": "cifar10", "exp": "narrow",
                "attn_resolutions": tuple(ref["case"]["ref_args"]["attn_resolutions"]), **args}
    discriminator = {k: v.float() for k, v in ref["small"]["state_dict"].items()}
    opt = {"state": state, "param_groups": [{"lr": 1.6e-4, "betas": (0.5, 0.9), "params": list(state)}]}
    content = {"epoch": 51, "global_step": 9945, "args": argparse.Namespace(**ref_args), "netG_dict": ddp(raw),
               "optimizerG": opt, "schedulerG": {"last_epoch": 50}, "netD_dict": ddp(discriminator),
               "optimizerD": {"state": {}, "param_groups": []}, "schedulerD": {"last_epoch": 50}}
    torch.save(content, path)
    return {"ema": ema_weights, "raw": raw, "discriminator": discriminator}


def mapped(state: dict, model) -> dict:
    return from_ddgan_state_dict(state, model.generator)


class Replay(RandomSource):
    """Hands out the latents and noises the reference's loop drew, in its order (z, then the posterior noise, per
    step), checking each shape. The loop's noise of the last step (t = 0) is masked there and not drawn here."""

    def __init__(self, latents: torch.Tensor, noises: torch.Tensor):
        super().__init__([torch.Generator()], stacked=False)
        self.queue = [t for z, n in zip(latents, noises) for t in (z, n)][:-1]

    def randn(self, shape, device=None, dtype=torch.float32):
        value = self.queue.pop(0)
        assert tuple(value.shape) == tuple(shape), (value.shape, shape)
        return value.to(device, dtype)


# ---------------------------------------------------------------------------------------------- sampling
def test_sampling_fixture_is_small_and_plain():
    assert SAMPLING.stat().st_size < 300_000
    torch.load(SAMPLING, weights_only=True)


@pytest.mark.parametrize("name", ["T4", "T2"])
def test_generator_chain_equals_the_reference_sampling_loop(ref, imported, name):
    """The imported checkpoint's generator chain gives what the reference's sample_from_model computed with the
    same weights, x_T, latents and noise (replayed), and with the same seed (torch's CPU generator draws the
    reference's global-RNG sequence: a latent then the posterior noise per step)."""
    chain = ref["sampling"]["chains"][name]
    model, cfg = load_model(imported[chain["T"]])
    assert model.diffusion.num_timesteps == chain["T"] == cfg.diffusion.steps
    assert (cfg.schedule.name, cfg.schedule.beta_min, cfg.schedule.beta_max) == ("ddgan_vp", 0.1, 20.0)
    sampler = GeneratorChain(model.diffusion)
    with torch.no_grad():
        replay = Replay(chain["latents"], chain["noises"])
        replayed = sampler.sample(lambda x, t: model.generator(x, t, model.sample_z(x, replay)), chain["x_T"], replay)
        seeded = model.draw(sampler, chain["x_T"], chain["seed"])
    assert not replay.queue
    torch.testing.assert_close(replayed, chain["out"], atol=1e-5, rtol=0)
    torch.testing.assert_close(seeded, chain["out"], atol=1e-5, rtol=0)


def run_siddm_sample(argv: list[str], monkeypatch) -> None:
    """``siddm-sample ARGV`` in this process: the console script's function, Hydra and all."""
    from hydra.core.global_hydra import GlobalHydra

    from siddm_lab.cli.sample import main

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["siddm-sample", *argv])
    main()


def test_import_then_siddm_sample_through_the_clis(ref, netg, tmp_path, capsys, monkeypatch):
    """siddm-import and siddm-sample (their console scripts' functions, in this process) import the checkpoint and
    sample it with sampler=generator: NFE 4, and seed=0's samples are the reference loop's for the x_T and chain
    seed that seed draws (sampling.pt's ``cli``), as uint8 images."""
    ckpt = tmp_path / "ddgan.ckpt"
    assert import_main(["ddgan", str(netg), str(ckpt), *NARROW]) == 0
    assert '"T": 4' in capsys.readouterr().out
    stored = torch.load(ckpt, weights_only=True)
    assert stored["siddm_import"]["file_kind"] == "netG" and stored["siddm_import"]["parts"] == ["generator"]
    assert stored["siddm_import"]["epoch"] == 1200 and stored["data_shape"] == [3, 16, 16]
    assert not [k for k in stored["state_dict"] if k.startswith("discriminator.")]
    cli = ref["sampling"]["cli"]
    run_siddm_sample([f"ckpt={ckpt}", "sampler=generator", "seed=0", f"num_samples={len(cli['out'])}",
                      f"batch_size={len(cli['out'])}", "progress=false", "device=cpu", "threads=1",
                      f"hydra.run.dir={tmp_path}/sample"], monkeypatch)
    metrics = json.loads((tmp_path / "sample" / "metrics.json").read_text())
    assert metrics["nfe"] == 4 and metrics["sampler"] == "generator"
    assert metrics["model"] == "DDGAN"  # the method, not the class that trains both
    samples = np.load(tmp_path / "sample" / "samples.npz")["samples"]
    expected = ((cli["out"].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert samples.shape == expected.shape
    assert np.abs(samples.astype(int) - expected.astype(int)).max() <= 1


def test_recipes_are_ddgans_commands():
    """--recipe: the nets and processes of DDGAN's README commands (train_ddgan.py defaults for the rest)."""
    expected = {"cifar10": (128, [1, 2, 2, 2], 4, 4, 32), "celeba_256": (64, [1, 1, 2, 2, 4, 4], 3, 2, 256),
                "lsun": (64, [1, 1, 2, 2, 4, 4], 3, 4, 256)}
    for recipe in RECIPES:
        cfg, name, _ = import_config([], recipe, output_dir="/tmp")
        net = cfg.model.generator
        assert name == recipe
        assert (net.num_channels_dae, list(net.ch_mult), net.n_mlp, cfg.diffusion.steps, net.image_size) == \
            expected[recipe], recipe
        assert (net.cond_dim, net.z_emb_dim, net.num_res_blocks, list(net.attn_resolutions), net.not_use_tanh) == \
            (100, 256, 2, [16], False)
        assert (cfg.schedule.name, cfg.schedule.beta_min, cfg.schedule.beta_max, cfg.schedule.geometric) == \
            ("ddgan_vp", 0.1, 20.0, False)
        assert cfg.model.objective._target_.endswith("DDGANLoss") and cfg.discriminator.ngf == 64
    assert import_config(["dataset=celebahq256"], None, output_dir="/tmp")[1] == "celeba_256"


# ---------------------------------------------------------------------------------------------- content.pth
def test_content_pth_ema_raw_and_discriminator(ref, tmp_path):
    """content.pth: the generator's EMA (default) as state_dict and its raw netG_dict as current_model_state;
    the joint Discriminator_small gives the reference's logits; --weights raw takes the raw generator."""
    src = tmp_path / "content.pth"
    weights = content_file(ref, src)
    import_ddgan(src, tmp_path / "ema.ckpt", NARROW)
    ema, _ = load_model(tmp_path / "ema.ckpt")
    raw, _ = load_model(tmp_path / "ema.ckpt", weights="raw")
    for model, which in ((ema, "ema"), (raw, "raw")):
        for k, v in mapped(weights[which], model).items():
            assert torch.equal(model.generator.state_dict()[k], v), (which, k)
    small = ref["small"]
    with torch.no_grad():
        logit = ema.discriminator(small["x_prev"].float(), small["t"], small["x_t"].float()).logit
    torch.testing.assert_close(logit, small["out"], atol=1e-5, rtol=1e-5)
    stored = torch.load(tmp_path / "ema.ckpt", weights_only=True)
    assert stored["siddm_import"]["parts"] == ["generator", "discriminator"] and stored["global_step"] == 9945
    assert stored["siddm_import"]["ddgan_args"]["num_timesteps"] == 4

    import_ddgan(src, tmp_path / "raw.ckpt", NARROW, weights="raw", with_discriminator=False)
    model, _ = load_model(tmp_path / "raw.ckpt")
    for k, v in mapped(weights["raw"], model).items():
        assert torch.equal(model.generator.state_dict()[k], v), k
    assert torch.load(tmp_path / "raw.ckpt", weights_only=True)["siddm_import"]["parts"] == ["generator"]


# ---------------------------------------------------------------------------------------------- refusals
def refused(argv, capsys) -> str:
    assert import_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


class _Payload:
    """Stands for an arbitrary object pickled into a file."""


def test_wrong_files_are_refused(ref, tmp_path, capsys):
    out = str(tmp_path / "out.ckpt")
    cases = {
        "netD.pth": (ddp({k: v.float() for k, v in ref["small"]["state_dict"].items()}), "discriminator's weights"),
        "optD.pth": ({"state": {}, "param_groups": [{"lr": 1e-4, "params": []}]}, "optimizer's state"),
        "payload.pth": ({"netG_dict": {}, "x": _Payload()}, "refusing to read"),
        "other.pth": ({"fc.weight": torch.ones(2, 2)}, "another network"),
        "list.pth": ([torch.ones(1)], "holds a list"),
    }
    for name, (obj, message) in cases.items():
        torch.save(obj, tmp_path / name)
        assert message in refused(["ddgan", str(tmp_path / name), out, *NARROW], capsys), name
    (tmp_path / "text.pth").write_text("not a checkpoint")
    assert "cannot read" in refused(["ddgan", str(tmp_path / "text.pth"), out, *NARROW], capsys)
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"a": 1}, f)
    assert "cannot read" in refused(["ddgan", str(tmp_path / "plain.pkl"), out, *NARROW], capsys)
    assert "does not exist" in refused(["ddgan", str(tmp_path / "missing.pth"), out, *NARROW], capsys)
    content = tmp_path / "content_no_ema.pth"
    content_file(ref, content, ema=False)
    assert "--weights raw" in refused(["ddgan", str(content), out, *NARROW], capsys)
    assert not Path(out).exists()


def test_netg_of_another_architecture_or_dataset_is_refused(ref, netg, tmp_path, capsys):
    out = str(tmp_path / "out.ckpt")
    # the CIFAR-10 recipe's net (128 channels, nz 100, ...) for the narrow weights: named key by key
    err = refused(["ddgan", str(netg), out, "dataset=cifar10"], capsys)
    for part in ("net.num_channels_dae=128 but the weights have 16", "model.nz=100 but the weights have 8",
                 "net.z_emb_dim=256", "net.n_mlp=4", "--recipe"):
        assert part in err, (part, err)
    # another layout of the same widths: the mapping names the keys and shapes
    err = refused(["ddgan", str(netg), out, *NARROW, "net.ch_mult=[1,2,2]"], capsys)
    assert "do not fit net=ncsnpp_gen" in err and "ch_mult [1, 2, 2]" in err and "keys" in err
    # a dataset whose channels or size do not fit the weights
    err = refused(["ddgan", str(netg), out, *NARROW, "dataset=mnist", "dataset.image_size=16"], capsys)
    assert "dataset.channels=1 but the weights have 3" in err
    err = refused(["ddgan", str(netg), out, *NARROW, "dataset.image_size=32"], capsys)
    assert "image_size 32" in err
    err = refused(["ddgan", str(netg), out, *[o for o in NARROW if not o.startswith("dataset")],
                   "dataset=gaussians25"], capsys)
    assert "dataset" in err, err
    # a model, net or discriminator other than DDGAN's
    assert "init.ckpt" in refused(["ddgan", str(netg), out, *NARROW, "model=siddm_image"], capsys)
    assert "not DDGAN's generator" in refused(["ddgan", str(netg), out, "net=unet_gen"], capsys)
    assert "not DDGAN's" in refused(["ddgan", str(netg), out, "discriminator=conv"], capsys)
    # bad overrides, recipe and weights
    assert "do not compose" in refused(["ddgan", str(netg), out, *NARROW, "net=nope"], capsys)
    assert "--weights raw" in refused(["ddgan", str(netg), out, *NARROW, "--weights", "raw"], capsys)
    assert not Path(out).exists()


def test_content_args_that_differ_from_the_config_are_refused(ref, tmp_path, capsys):
    """content.pth records DDGAN's settings: a config with another T or schedule (which the weights cannot show)
    is refused, naming both values."""
    src = tmp_path / "content.pth"
    content_file(ref, src, num_timesteps=2, beta_max=10.0)
    err = refused(["ddgan", str(src), str(tmp_path / "out.ckpt"), *NARROW], capsys)
    assert "diffusion.steps=4 but DDGAN's run used --num_timesteps 2" in err
    assert "schedule.beta_max=20.0 but DDGAN's run used --beta_max 10.0" in err
    assert import_main(["ddgan", str(src), str(tmp_path / "out.ckpt"), *NARROW, "diffusion.steps=2",
                        "schedule.beta_max=10.0"]) == 0


def test_an_existing_output_is_kept_unless_forced(netg, tmp_path, capsys):
    out = tmp_path / "out.ckpt"
    out.write_bytes(b"an earlier file")
    assert "--force" in refused(["ddgan", str(netg), str(out), *NARROW], capsys)
    assert out.read_bytes() == b"an earlier file"
    assert "is the input file" in refused(["ddgan", str(netg), str(netg), *NARROW, "--force"], capsys)
    assert import_main(["ddgan", str(netg), str(out), *NARROW, "--force"]) == 0
    load_model(out)


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        import_main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--recipe" in out and "init.ckpt" in out and "--force" in out


@pytest.mark.slow
def test_the_console_script_refuses_without_a_traceback(tmp_path):
    script = Path(sys.executable).parent / "siddm-import"
    if not script.exists():
        pytest.skip("siddm-import is not installed (pip install -e .)")
    r = subprocess.run([str(script), "ddgan", str(tmp_path / "missing.pth"), str(tmp_path / "o.ckpt")],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------- fine-tuning
class CaptureStart(Callback):
    """Records the nets a run starts training with."""

    seen: dict = {}

    def on_train_start(self, trainer, pl_module):
        d = pl_module.discriminator
        CaptureStart.seen = {"generator": {k: v.clone() for k, v in pl_module.generator.state_dict().items()},
                             "discriminator": type(d).__name__, "joint": d.joint,
                             "heads": (d.cond is not None, d.aux is not None)}


def image_folder(root: Path, n_train: int = 24, n_test: int = 8) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / split / f"{i}.png")
    return root


FINETUNE = ["model=siddm_image", "net=ncsnpp_gen", "discriminator=ddgan_small", "schedule=ddgan_vp",
            "diffusion.steps=4", *NARROW[1:], "dataset=image_folder", "dataset.num_workers=0", "dataset.batch_size=8",
            "dataset.val_size=8", "trainer.max_steps=3", "trainer.val_check_interval=3",
            "callbacks.evaluation.num_samples=8",
            "eval.num_samples=8", "eval.batch_size=8", "model.log_every_n_steps=1", "threads=1"]


def test_finetune_the_imported_ddgan_as_siddm(imported, tmp_path):
    """init.ckpt: a SIDDM run (marginal discriminator with its heads, AFD) starts from the imported DDGAN's
    generator and trains a few iterations; the imported checkpoint cannot be resumed from (no optimizer state),
    and parts it does not hold or nets that do not fit are refused before the run writes anything."""
    data = image_folder(tmp_path / "data")
    ckpt = imported[4]
    base = FINETUNE + [f"paths.data_dir={data}", f"init.ckpt={ckpt}"]
    metrics, _ = run_train(base + ["+callbacks.capture._target_=tests.test_import_ddgan.CaptureStart"],
                           tmp_path / "run")
    source, _ = load_model(ckpt)
    start = CaptureStart.seen
    assert start["discriminator"] == "DDGANDiscriminatorSmall" and not start["joint"] and start["heads"] == (True, True)
    for k, v in source.generator.state_dict().items():
        assert torch.equal(start["generator"][k], v), k
    assert metrics["nfe"] == 4 and metrics["global_step"] == 3
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    trained = {k.removeprefix("generator."): v for k, v in last["current_model_state"].items()
               if k.startswith("generator.")}
    assert any(not torch.equal(trained[k], v) for k, v in source.generator.state_dict().items())

    refusals = ((["init.parts=[discriminator]"], "holds no discriminator weights"),
                (["net.num_channels_dae=32"], "model.generator.num_channels_dae: checkpoint 16, this run 32"),
                ([f"ckpt_path={ckpt}"], "holds weights only"))
    for extra, message in refusals:
        with pytest.raises(CheckpointError, match=message):
            run_train(base + extra, tmp_path / "refused")
        assert not (tmp_path / "refused" / "checkpoints").exists()


def test_the_generator_net_is_the_references(ref):
    """The overrides of NARROW build the net of fixture.pt's narrow case (so the import maps onto it)."""
    cfg, _, _ = import_config(NARROW, None, output_dir="/tmp")
    kwargs = dict(ref["case"]["kwargs"])
    net_cfg = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in cfg.model.generator.items()}
    for k, v in kwargs.items():
        assert net_cfg[k] == (list(v) if isinstance(v, (list, tuple)) else v), k
    assert isinstance(NCSNpp(**kwargs), NCSNpp)


@pytest.mark.slow
@pytest.mark.parametrize("recipe,kwargs", [("cifar10", {}), ("celeba_256", dict(image_size=256, num_channels_dae=64,
                                                                                ch_mult=(1, 1, 2, 2, 4, 4), n_mlp=3))])
def test_full_size_recipes_import(recipe, kwargs, tmp_path):
    """A generator of DDGAN's released layouts (its weights under the reference's keys) imports with --recipe
    alone: CIFAR-10 48.4M parameters at T=4, CelebA-HQ-256 39.7M at T=2."""
    from siddm_lab.nets import to_ddgan_state_dict

    torch.manual_seed(0)
    net = NCSNpp(**kwargs)
    torch.save(ddp(to_ddgan_state_dict(net)), tmp_path / "netG_1.pth")
    summary = import_ddgan(tmp_path / "netG_1.pth", tmp_path / "out.ckpt", recipe=recipe)
    assert summary["T"] == {"cifar10": 4, "celeba_256": 2}[recipe]
    model, _ = load_model(tmp_path / "out.ckpt")
    assert sum(p.numel() for p in model.generator.parameters()) == summary["generator_parameters"]
    for k, v in net.state_dict().items():
        assert torch.equal(model.generator.state_dict()[k], v), k
