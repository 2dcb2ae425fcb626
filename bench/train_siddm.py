"""SIDDM training iteration (D step + G step): siddm_lab (Lightning, manual optimisation, EMA callback)
vs a bare PyTorch loop with the same math, nets and batch, in one process. Reports seconds per
iteration and the ratio (goal <= 1.15). Writes bench/results/train_siddm.{json,md}.

    python bench/train_siddm.py [--repeats 3] [--iters 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from lightning.pytorch.callbacks import Checkpoint  # noqa: E402
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn  # noqa: E402

from siddm_lab.config import compose  # noqa: E402
from siddm_lab.utils.loggers import build_callbacks, build_loggers  # noqa: E402

warnings.filterwarnings("ignore")


class _IterTimer(L.Callback):
    def __init__(self, warmup):
        self.warmup, self.t0, self.t1 = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:  # global_step counts iterations
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.t1 = time.perf_counter()


def config(out_dir):
    # the table's recipe (R1 every iteration in both)
    return compose(["experiment=siddm_toy", "trainer.enable_progress_bar=false", "trainer.val_check_interval=100000",
                    "model.eval_num_samples=0", "logger=csv"], output_dir=out_dir)


def run_siddm(cfg, iters, warmup):
    L.seed_everything(0, verbose=False)
    dm = instantiate(cfg.dataset)
    model = instantiate(cfg.model)
    model.data_shape = tuple(dm.data_shape)
    timer = _IterTimer(warmup)
    callbacks = [c for c in build_callbacks(cfg) if not isinstance(c, Checkpoint)] + [timer]
    trainer = instantiate(cfg.trainer, max_steps=warmup + iters, callbacks=callbacks,
                          enable_checkpointing=False, logger=build_loggers(cfg), limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    return (timer.t1 - timer.t0) / iters


def run_bare(cfg, iters, warmup):
    """The same iteration written directly against torch (same nets, losses, optimisers, EMA)."""
    L.seed_everything(0, verbose=False)
    dm = instantiate(cfg.dataset)
    dm.setup("fit")
    model = instantiate(cfg.model)  # only to build the same nets and diffusion
    G, D, diff = model.generator, model.discriminator, model.diffusion
    lam, lam_reg, r1 = model.objective.lambda_afd, model.objective.lambda_disc_reg, model.objective.r1_gamma
    opt_g = instantiate(cfg.model.optimizer_g)(params=G.parameters())
    opt_d = instantiate(cfg.model.optimizer_d)(params=D.parameters())
    # siddm_lab's EMA averages the whole module (G and D), as Lightning's WeightAveraging does
    GD = torch.nn.ModuleList([G, D])
    ema = AveragedModel(GD, multi_avg_fn=get_ema_multi_avg_fn(cfg.callbacks.ema.decay), use_buffers=False)
    T, nz = diff.num_timesteps, model.nz

    def pair(x0):
        t = torch.randint(0, T, (x0.shape[0],))
        x_prev, x_t = diff.q_sample_pairs(x0, t, torch.randn_like(x0), torch.randn_like(x0))
        return t, x_prev, x_t

    step, t0 = 0, None
    while step < warmup + iters:
        for x0 in dm.train_dataloader():
            if step == warmup:
                t0 = time.perf_counter()
            if step >= warmup + iters:
                break
            # D step
            t, x_prev, x_t = pair(x0)
            for p in D.parameters():
                p.requires_grad_(True)
            x_real = x_prev.detach().requires_grad_(r1 > 0)
            out_real = D(x_real, t, heads=("logit", "aux"))
            with torch.no_grad():
                fake = diff.q_posterior_sample(G(x_t, t, torch.randn(x0.shape[0], nz)), x_t, t, torch.randn_like(x_t))
            out_fake = D(fake, t, heads=("logit", "cond"))
            loss_d = (F.softplus(-out_real.logit).mean() + F.softplus(out_fake.logit).mean()
                      + lam_reg * (out_real.aux - x0).pow(2).mean() + lam * (x_t - out_fake.cond).pow(2).mean())
            if r1 > 0:
                (grad,) = torch.autograd.grad(out_real.logit.sum(), x_real, create_graph=True)
                loss_d = loss_d + r1 / 2 * grad.pow(2).sum(1).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            # G step on a fresh pair
            t, _, x_t = pair(x0)
            for p in D.parameters():
                p.requires_grad_(False)
            fake = diff.q_posterior_sample(G(x_t, t, torch.randn(x0.shape[0], nz)), x_t, t, torch.randn_like(x_t))
            out = D(fake, t, heads=("logit", "cond"))
            a = diff.sqrt_alphas[t].float()[:, None]
            b = diff.sqrt_betas[t].float()[:, None]
            afd = (a * fake + b * torch.randn_like(fake) - x_t).pow(2).mean()
            loss_g = F.softplus(-out.logit).mean() + lam * afd - lam * (x_t - out.cond).pow(2).mean()
            if not (torch.isfinite(loss_d) and torch.isfinite(loss_g)):
                raise FloatingPointError
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            ema.update_parameters(GD)
            step += 1
    return (time.perf_counter() - t0) / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config(out / "_siddm")
    ours, bare = [], []
    for i in range(args.repeats):  # interleaved, alternating which side goes first
        for side in ("bare", "ours") if i % 2 == 0 else ("ours", "bare"):
            (bare if side == "bare" else ours).append((run_bare if side == "bare" else run_siddm)(cfg, args.iters, 10))
    ratios = [o / b for o, b in zip(ours, bare)]
    r = {"siddm_lab_s_per_iter": statistics.median(ours), "bare_s_per_iter": statistics.median(bare),
         "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
         "iters": args.iters, "batch_size": int(cfg.dataset.batch_size), "all_siddm_lab": ours, "all_bare": bare}
    print(f"siddm toy: siddm_lab {r['siddm_lab_s_per_iter'] * 1e3:.2f} ms/iter, bare {r['bare_s_per_iter'] * 1e3:.2f} "
          f"ms/iter, ratio median {r['ratio']:.3f} (min {r['ratio_min']:.3f}, max {r['ratio_max']:.3f})")
    (out / "train_siddm.json").write_text(json.dumps(r, indent=2) + "\n")
    (out / "train_siddm.md").write_text(
        "# SIDDM training iteration (D + G): siddm_lab vs bare PyTorch (toy, CPU)\n\n"
        "| batch | siddm_lab ms/iter | bare ms/iter | ratio median (goal <= 1.15) | min | max |\n"
        "|---|---|---|---|---|---|\n"
        f"| {r['batch_size']} | {r['siddm_lab_s_per_iter'] * 1e3:.2f} | {r['bare_s_per_iter'] * 1e3:.2f} | "
        f"{r['ratio']:.3f} | {r['ratio_min']:.3f} | {r['ratio_max']:.3f} |\n")


if __name__ == "__main__":
    main()
