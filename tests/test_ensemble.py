"""Ensembles (seeds=[...]): E toy models trained as one module in one process. Member k must be the
single run with its seed (weights, EMA, samples) and the outputs one folder per member."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from siddm_lab.diffusion import GeneratorChain
from siddm_lab.errors import CheckpointError
from siddm_lab.nets import EnsembleLinear, SkipMLPGenerator, TimeMLP, UNet, extract_member, stack_members
from tests.helpers import FAST, run_train


def test_stacked_nets_compute_each_member():
    torch.manual_seed(0)
    nets = [SkipMLPGenerator(hidden=16) for _ in range(3)]
    stacked = stack_members(nets)
    assert sum(isinstance(m, EnsembleLinear) for m in stacked.modules()) == 7  # temb 2, MLP 4, skip 1
    x, t, z = torch.randn(3, 5, 2), torch.rand(3, 5), torch.rand(3, 5, 2)
    out = stacked(x, t, z)
    for k, net in enumerate(nets):
        torch.testing.assert_close(out[k], net(x[k], t[k], z[k]), rtol=1e-6, atol=1e-6)
        back = extract_member(stacked, k)
        for (n1, p1), (n2, p2) in zip(net.named_parameters(), back.named_parameters()):
            assert n1 == n2 and torch.equal(p1, p2)
    with pytest.raises(ValueError, match="leading dim"):
        stacked(x[:2], t[:2], z[:2])


def test_members_share_no_gradient():
    torch.manual_seed(0)
    stacked = stack_members([TimeMLP(hidden=8, num_layers=1) for _ in range(3)])
    x, t = torch.randn(3, 4, 2), torch.randint(0, 10, (3, 4))
    stacked(x, t)[1].sum().backward()  # only member 1 takes part in this loss
    for p in stacked.parameters():
        assert p.grad[0].abs().sum() == 0 and p.grad[2].abs().sum() == 0


def test_nets_with_other_parameters_are_refused():
    with pytest.raises(Exception, match="nn.Linear"):
        stack_members([UNet(in_channels=1, image_size=8, ch=32, channel_mult=(1,), attn_resolutions=())] * 2)
    with pytest.raises(ValueError, match="architecture"):
        stack_members([TimeMLP(hidden=8), TimeMLP(hidden=16)])


TINY = FAST + ["dataset.n_train=1024", "dataset.n_val=64", "dataset.n_eval=300", "dataset.batch_size=64",
               "callbacks.evaluation.num_samples=100", "eval.num_samples=200", "eval.batch_size=200",
               "trainer.max_steps=6", "trainer.val_check_interval=3"]
RECIPES = {
    "paper": ["experiment=siddm_toy", "net.hidden=16", "discriminator.hidden=16",
              "model.objective.r1_gamma=0.1", "model.grad_clip_g=0.5", "callbacks.ema.decay=0.9"],
    "released": ["experiment=siddm_toy_released", "net.hidden=16", "discriminator.hidden=16", "eval.steps=[4,2]"],
}


def _state(path):
    ckpt = torch.load(path, weights_only=True)
    return ckpt["state_dict"], ckpt.get("current_model_state", ckpt["state_dict"])  # (no EMA: one set)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_ensemble_member_equals_the_single_run(recipe, tmp_path):
    """Member 1 of seeds=[0,1,2] vs the single run with seed=1: the same data batches, noise, latents,
    Adam steps, gradient clipping, R1 and EMA give the same weights (to float32 round-off of batched vs
    plain matmuls) and the same evaluation samples."""
    ens, _ = run_train(TINY + RECIPES[recipe] + ["seeds=[0,1,2]"], tmp_path / "ens")
    single, _ = run_train(TINY + RECIPES[recipe] + ["seed=1"], tmp_path / "single")
    assert [m["seed"] for m in ens["members"]] == [0, 1, 2] and ens["ensemble_members"] == 3
    for which in range(2):  # EMA weights, raw weights
        e, s = _state(tmp_path / "ens" / "checkpoints" / "last.ckpt")[which], \
            _state(tmp_path / "single" / "checkpoints" / "last.ckpt")[which]
        assert set(e) == set(s)
        for k in s:
            if k.startswith(("generator.", "discriminator.")):
                torch.testing.assert_close(e[k][1], s[k], rtol=1e-5, atol=1e-6, msg=k)
                assert not torch.allclose(e[k][0], s[k], atol=1e-4) or s[k].numel() < 2, k  # member 0 differs
    m1 = json.loads((tmp_path / "ens" / "seed_1" / "metrics.json").read_text())
    ms = json.loads((tmp_path / "single" / "metrics.json").read_text())
    for k in ("fd_2d", "hq_ratio", "modes_covered", "mmd_poly2"):
        assert m1[k] == pytest.approx(ms[k], rel=1e-3, abs=1e-4), k
    a = __import__("numpy").load(tmp_path / "ens" / "seed_1" / "samples.npz")["samples"]
    b = __import__("numpy").load(tmp_path / "single" / "samples.npz")["samples"]
    assert abs(a - b).max() < 1e-3
    for seed in (0, 1, 2):
        lines = (tmp_path / "ens" / f"seed_{seed}" / "history.jsonl").read_text().splitlines()
        assert [json.loads(x)["iteration"] for x in lines] == [3, 6]
    if recipe == "released":
        assert {"fd_2d@2", "hq_ratio@2", "nfe@2"} <= set(m1) and m1["nfe@2"] == 2 and m1["nfe"] == 4


def test_ensemble_checkpoint_members_and_sampling(tmp_path):
    from siddm_lab.models.loading import load_model
    from tests.test_sample import run_sample

    run_train(TINY + RECIPES["released"] + ["seeds=[3,5]"], tmp_path / "ens")
    ckpt = tmp_path / "ens" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=r"ensemble of 2 models \(seeds \[3, 5\]\).*member=<seed>"):
        load_model(ckpt)
    with pytest.raises(CheckpointError, match="member=4 is not one"):
        load_model(ckpt, member=4)
    model, _ = load_model(ckpt, member=5)
    assert model.members is None
    samples = model.sample(50, GeneratorChain(model.diffusion, 3), generator=torch.Generator().manual_seed(0))
    assert samples.shape == (50, 2)
    info = run_sample([f"ckpt={ckpt}", "member=5", "sampler=generator", "sampler.steps=3", "num_samples=100",
                       "batch_size=100", "device=cpu"], tmp_path / "sample")
    assert info["nfe"] == 3 and info["member"] == 5 and "fd_2d" in info
    with pytest.raises(Exception, match="sampler=ddim needs a model's .x0', ε'. prediction.*which this "
                                        "continuous-time diffusion GAN .*Samplers that fit it: generator"):
        run_sample([f"ckpt={ckpt}", "member=5", "sampler=ddim"], tmp_path / "sample2")


def test_ensembles_of_unsupported_models_are_refused(tmp_path):
    with pytest.raises(Exception, match="sweep the seeds"):
        run_train(FAST + ["experiment=demo", "seeds=[0,1]", "trainer.max_steps=2"], tmp_path)


def test_nan_in_one_member_names_its_seed(tmp_path):
    from hydra.utils import instantiate

    from siddm_lab.errors import NonFiniteLossError
    from siddm_lab.training import build_model
    from tests.helpers import compose_cfg

    cfg = compose_cfg(TINY + RECIPES["released"] + ["seeds=[7,8]"], tmp_path)
    dm = instantiate(cfg.dataset)
    model = build_model(cfg, dm)
    model.data_shape = (2,)
    with torch.no_grad():
        model.discriminator.logit.bias[1].fill_(float("nan"))
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, callbacks=[])
    with pytest.raises(NonFiniteLossError, match=r"seeds \[8\]"):
        trainer.fit(model, datamodule=dm)


def test_linear_layers_only_rule_names_the_layer():
    class WithNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.norm = nn.LayerNorm(2)

    with pytest.raises(Exception, match="LayerNorm at 'norm'"):
        stack_members([WithNorm(), WithNorm()])


def test_export_a_member_as_a_small_checkpoint_and_verify_it(tmp_path):
    from siddm_lab.cli.export import main as export_main
    from siddm_lab.models.loading import load_model

    run_train(TINY + RECIPES["released"] + ["seeds=[3,5]"], tmp_path / "ens")
    src = tmp_path / "ens" / "checkpoints" / "last.ckpt"
    dst, manifest = tmp_path / "share" / "m5.ckpt", tmp_path / "share" / "MANIFEST.json"
    assert export_main([str(src), str(dst), "--member", "5", "--manifest", str(manifest), "--command", "cmd"]) == 0
    entry = json.loads(manifest.read_text())["m5.ckpt"]
    assert entry["iterations"] == 6 and entry["seed"] == 5 and entry["command"] == "cmd"
    assert dst.stat().st_size < src.stat().st_size / 2
    small, cfg = load_model(dst)
    full, _ = load_model(src, member=5)
    assert cfg.seed == 5 and cfg.seeds is None
    g = torch.Generator().manual_seed(1)
    torch.testing.assert_close(small.sample(64, GeneratorChain(small.diffusion, 4), generator=g),
                               full.sample(64, GeneratorChain(full.diffusion, 4),
                                           generator=torch.Generator().manual_seed(1)))
    assert export_main(["--verify", str(manifest)]) == 0
    dst.write_bytes(dst.read_bytes()[:-10])
    assert export_main(["--verify", str(manifest)]) == 1
    assert export_main([str(src), str(tmp_path / "x.ckpt")]) == 2  # an ensemble needs --member
