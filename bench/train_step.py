"""DDPM training step: siddm_lab (Lightning Trainer + DDPM module + EMA callback) vs a bare PyTorch
loop doing the same math (t ~ U, ε ~ N, q_sample, MSE on ε, backward, Adam, LR warm-up, EMA) with
the same net and batch, in one process.

Reports seconds per step of each and the ratio siddm_lab / bare (goal <= 1.15), interleaving
repeats and taking medians because the machine is noisy. Writes bench/results/train_step.{json,md}.

    python bench/train_step.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from lightning.pytorch.callbacks import Checkpoint  # noqa: E402
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn  # noqa: E402

from siddm_lab.config import compose  # noqa: E402
from siddm_lab.utils.loggers import build_callbacks, build_loggers  # noqa: E402

warnings.filterwarnings("ignore")


class _StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup = warmup
        self.t0 = None
        self.t1 = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.t1 = time.perf_counter()


def case_config(case: str, out_dir: Path):
    if case == "toy_mlp":
        overrides = ["experiment=demo"]
    else:
        data_dir = os.environ.get("SIDDM_DATA_DIR", str(ROOT.parent / "shared" / "data"))
        overrides = ["experiment=ddpm_mnist", f"paths.data_dir={data_dir}", "dataset.subset=2048",
                     "dataset.batch_size=32"]
    overrides += ["trainer.enable_progress_bar=false", "trainer.val_check_interval=100000",
                  "callbacks.evaluation.num_samples=0", "logger=csv"]
    return compose(overrides, output_dir=out_dir)


def run_siddm(cfg, steps: int, warmup: int) -> float:
    L.seed_everything(0, verbose=False)
    dm = instantiate(cfg.dataset)
    model = instantiate(cfg.model)
    model.data_shape = tuple(dm.data_shape)
    # As a user's run, minus checkpoint files (disk I/O is not the step) and validation.
    callbacks = [c for c in build_callbacks(cfg) if not isinstance(c, Checkpoint)]
    timer = _StepTimer(warmup)
    trainer = instantiate(cfg.trainer, max_steps=warmup + steps, callbacks=callbacks + [timer],
                          enable_checkpointing=False, logger=build_loggers(cfg), limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    return (timer.t1 - timer.t0) / steps


def run_bare(cfg, steps: int, warmup: int) -> float:
    """The same math written directly against torch."""
    L.seed_everything(0, verbose=False)
    dm = instantiate(cfg.dataset)
    dm.setup("fit")
    net = instantiate(cfg.net)
    diffusion = instantiate(cfg.schedule)
    sqrt_ab = diffusion.sqrt_alphas_cumprod.float()
    sqrt_1m_ab = diffusion.sqrt_one_minus_alphas_cumprod.float()
    T = diffusion.num_timesteps
    ocfg = cfg.model.optimizer
    opt = torch.optim.Adam(net.parameters(), lr=ocfg.lr, weight_decay=ocfg.weight_decay)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-3, end_factor=1.0,
                                              total_iters=cfg.model.lr_scheduler.total_iters)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.callbacks.ema.decay), use_buffers=False)
    loader = dm.train_dataloader()
    step = 0
    t0 = None
    while step < warmup + steps:
        for x0 in loader:
            if step == warmup:
                t0 = time.perf_counter()
            if step >= warmup + steps:
                break
            t = torch.randint(0, T, (x0.shape[0],))
            eps = torch.randn_like(x0)
            shape = (-1,) + (1,) * (x0.dim() - 1)
            x_t = sqrt_ab[t].view(shape) * x0 + sqrt_1m_ab[t].view(shape) * eps
            loss = F.mse_loss(net(x_t, t), eps)
            if not torch.isfinite(loss):
                raise FloatingPointError
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ema.update_parameters(net)
            step += 1
    return (time.perf_counter() - t0) / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    ap.add_argument("--cases", default="toy_mlp,mnist_unet")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    steps = {"toy_mlp": 300, "mnist_unet": 15}
    warmup = {"toy_mlp": 30, "mnist_unet": 3}
    if args.quick:
        steps = {"toy_mlp": 40, "mnist_unet": 3}
        warmup = {"toy_mlp": 5, "mnist_unet": 1}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for case in args.cases.split(","):
        cfg = case_config(case, out_dir / f"_{case}")
        ours, bare = [], []
        for _ in range(args.repeats):  # interleaved
            bare.append(run_bare(cfg, steps[case], warmup[case]))
            ours.append(run_siddm(cfg, steps[case], warmup[case]))
        r = {
            "siddm_lab_s_per_step": statistics.median(ours),
            "bare_torch_s_per_step": statistics.median(bare),
            "ratio": statistics.median(ours) / statistics.median(bare),
            "steps": steps[case],
            "repeats": args.repeats,
            "batch_size": int(cfg.dataset.batch_size),
            "torch_threads": torch.get_num_threads(),
            "all_siddm_lab": ours,
            "all_bare": bare,
        }
        results[case] = r
        ours_ms, bare_ms = r["siddm_lab_s_per_step"] * 1e3, r["bare_torch_s_per_step"] * 1e3
        print(f"{case}: siddm_lab {ours_ms:.2f} ms/step, bare {bare_ms:.2f} ms/step, ratio {r['ratio']:.3f}",
              flush=True)
    (out_dir / "train_step.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# DDPM training step: siddm_lab vs bare PyTorch (same net, batch, math; CPU)", "",
             "| case | batch | siddm_lab ms/step | bare ms/step | ratio (goal <= 1.15) |", "|---|---|---|---|---|"]
    for case, r in results.items():
        lines.append(f"| {case} | {r['batch_size']} | {r['siddm_lab_s_per_step'] * 1e3:.2f} | "
                     f"{r['bare_torch_s_per_step'] * 1e3:.2f} | {r['ratio']:.3f} |")
    (out_dir / "train_step.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
