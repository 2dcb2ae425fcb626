"""SIDDM training iteration (D step + G step): siddm_lab (Lightning, manual optimisation, EMA callback)
against a bare PyTorch loop with the same math, nets and batch, in one process, interleaved.

Cases:
* ``toy``: the 25-Gaussians table's recipe (``experiment=siddm_toy``) -> ``train_siddm.{json,md}``.
* ``mnist``: the MNIST recipe's nets at its batch (``experiment=siddm_mnist``) and ``cifar10``: the
  CIFAR-10 recipe's nets (``experiment=siddm_cifar10``) at a small batch -> ``train_siddm_image.{json,md}``:
  seconds per iteration, images/s, the time of each part of the bare iteration (D step without / with R1,
  G step, EMA) and the ratio siddm_lab / bare. Batches are random images of the dataset's shape (the
  time of an iteration does not depend on the pixels; CIFAR-10 is not needed).
* ``options`` (MNIST recipe): siddm_lab with ``callbacks.speed.channels_last``, ``trainer.precision=
  bf16-mixed`` and ``callbacks.speed.compile`` against the fp32 default, each interleaved with it
  -> ``train_siddm_options.{json,md}``.

Every figure is a median over ``--repeats`` (>= 5) interleaved runs with min and max, at ``--threads``
torch threads (1 by default: the calibration runs use one core each).

    python bench/train_siddm.py --case toy|mnist|cifar10|options|all [--repeats 5] [--batch N]

Measuring one image case keeps the other case's row of ``train_siddm_image.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
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

COMMON = ["trainer.enable_progress_bar=false", "trainer.val_check_interval=100000",
          "callbacks.evaluation.num_samples=0", "logger=csv"]
IMAGE_CASES = {
    # case: (overrides, batch)
    "mnist": (["experiment=siddm_mnist"], None),
    "cifar10": (["experiment=siddm_cifar10", "trainer=cpu", "trainer.devices=1", "trainer.precision=32-true"], 8),
}


class _IterTimer(L.Callback):
    def __init__(self, warmup):
        self.warmup, self.t0, self.t1 = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:  # global_step counts iterations
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.t1 = time.perf_counter()


def random_images(split, shape, n=512):
    """A reader of uint8 images of ``shape`` (the bench's stand-in for the dataset's files)."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), np.zeros(n, dtype=np.int64)


def config(case, out_dir, extra=(), batch=None):
    if case == "toy":  # the table's recipe (R1 every iteration in both)
        return compose(["experiment=siddm_toy", *COMMON, *extra], output_dir=out_dir)
    overrides, case_batch = IMAGE_CASES[case]
    batch = batch or case_batch
    cfg = compose([*overrides, *COMMON, "paths.data_dir=/nonexistent", *extra], output_dir=out_dir)
    if batch is not None:
        cfg.dataset.batch_size = batch
    return cfg


def datamodule(cfg):
    if "reader" not in cfg.dataset:
        return instantiate(cfg.dataset)
    import functools

    shape = (int(cfg.dataset.channels), int(cfg.dataset.image_size), int(cfg.dataset.image_size))
    return instantiate(cfg.dataset, reader=functools.partial(random_images, shape=shape), pad_to=None,
                       _convert_="partial")


def run_siddm(cfg, iters, warmup):
    if cfg.callbacks.get("speed", {}).get("compile"):
        torch._dynamo.reset()  # every run compiles afresh (and never reaches dynamo's recompile limit)
    L.seed_everything(0, verbose=False)
    dm = datamodule(cfg)
    model = instantiate(cfg.model)
    model.data_shape = tuple(dm.data_shape)
    timer = _IterTimer(warmup)
    callbacks = [c for c in build_callbacks(cfg) if not isinstance(c, Checkpoint)] + [timer]
    trainer = instantiate(cfg.trainer, max_steps=warmup + iters, callbacks=callbacks, enable_checkpointing=False,
                          logger=build_loggers(cfg), limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    return (timer.t1 - timer.t0) / iters


def run_bare(cfg, iters, warmup, parts: dict | None = None, r1_every=None):
    """The same iteration written directly against torch (same nets, losses, optimisers, EMA of G and D).
    ``parts`` collects the seconds of each part per iteration; ``r1_every`` overrides lazy_reg."""
    L.seed_everything(0, verbose=False)
    dm = datamodule(cfg)
    dm.setup("fit")
    model = instantiate(cfg.model)  # only to build the same nets and diffusion
    G, D, diff, obj = model.generator, model.discriminator, model.diffusion, model.objective
    lam, lam_reg, r1 = obj.lambda_afd, obj.lambda_disc_reg, obj.r1_gamma
    lazy = r1_every or obj.lazy_reg
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
            with_r1 = r1 > 0 and step % lazy == 0
            c0 = time.perf_counter()
            # D step
            t, x_prev, x_t = pair(x0)
            for p in D.parameters():
                p.requires_grad_(True)
            x_real = x_prev.detach().requires_grad_(with_r1)
            out_real = D(x_real, t, heads=("logit", "aux"))
            with torch.no_grad():
                fake = diff.q_posterior_sample(G(x_t, t, torch.randn(x0.shape[0], nz)), x_t, t, torch.randn_like(x_t))
            out_fake = D(fake, t, heads=("logit", "cond"))
            loss_d = (F.softplus(-out_real.logit).mean() + F.softplus(out_fake.logit).mean()
                      + lam_reg * (out_real.aux - x0).pow(2).mean() + lam * (x_t - out_fake.cond).pow(2).mean())
            if with_r1:
                (grad,) = torch.autograd.grad(out_real.logit.sum(), x_real, create_graph=True)
                loss_d = loss_d + r1 / 2 * grad.pow(2).flatten(1).sum(1).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            c1 = time.perf_counter()
            # G step on a fresh pair
            t, _, x_t = pair(x0)
            for p in D.parameters():
                p.requires_grad_(False)
            fake = diff.q_posterior_sample(G(x_t, t, torch.randn(x0.shape[0], nz)), x_t, t, torch.randn_like(x_t))
            out = D(fake, t, heads=("logit", "cond"))
            a, b = diff.q_step_coefficients(t, fake)
            afd = (a * fake + b * torch.randn_like(fake) - x_t).pow(2).mean()
            loss_g = F.softplus(-out.logit).mean() + lam * afd - lam * (x_t - out.cond).pow(2).mean()
            if not (torch.isfinite(loss_d) and torch.isfinite(loss_g)):
                raise FloatingPointError
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            c2 = time.perf_counter()
            ema.update_parameters(GD)
            c3 = time.perf_counter()
            if parts is not None and step >= warmup:
                parts.setdefault("d_step_r1" if with_r1 else "d_step", []).append(c1 - c0)
                parts.setdefault("g_step", []).append(c2 - c1)
                parts.setdefault("ema", []).append(c3 - c2)
            step += 1
    return (time.perf_counter() - t0) / iters


def interleaved(a, b, repeats):
    """(results of a, results of b): ``repeats`` runs of each, alternating which side goes first."""
    ra, rb = [], []
    for i in range(repeats):
        for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
            (ra if side == "a" else rb).append(a() if side == "a" else b())
    return ra, rb


def summary(ours, bare):
    ratios = [o / b for o, b in zip(ours, bare)]
    return {"siddm_lab_s_per_iter": statistics.median(ours), "bare_s_per_iter": statistics.median(bare),
            "siddm_lab_min": min(ours), "bare_min": min(bare),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "all_siddm_lab": ours, "all_bare": bare}


def bench_toy(args, out):
    cfg = config("toy", out / "_siddm")
    bare, ours = interleaved(lambda: run_bare(cfg, args.iters, 10), lambda: run_siddm(cfg, args.iters, 10),
                             args.repeats)
    r = {**summary(ours, bare), "iters": args.iters, "batch_size": int(cfg.dataset.batch_size),
         "threads": torch.get_num_threads()}
    print(f"siddm toy: siddm_lab {r['siddm_lab_s_per_iter'] * 1e3:.2f} ms/iter, bare {r['bare_s_per_iter'] * 1e3:.2f} "
          f"ms/iter, ratio median {r['ratio']:.3f} (min {r['ratio_min']:.3f}, max {r['ratio_max']:.3f})")
    (out / "train_siddm.json").write_text(json.dumps(r, indent=2) + "\n")
    (out / "train_siddm.md").write_text(
        "# SIDDM training iteration (D + G): siddm_lab vs bare PyTorch (toy, CPU)\n\n"
        "| batch | siddm_lab ms/iter | bare ms/iter | ratio median (goal <= 1.15) | min | max |\n"
        "|---|---|---|---|---|---|\n"
        f"| {r['batch_size']} | {r['siddm_lab_s_per_iter'] * 1e3:.2f} | {r['bare_s_per_iter'] * 1e3:.2f} | "
        f"{r['ratio']:.3f} | {r['ratio_min']:.3f} | {r['ratio_max']:.3f} |\n")


def _params(cfg):
    m = instantiate(cfg.model)
    return (sum(p.numel() for p in m.generator.parameters()), sum(p.numel() for p in m.discriminator.parameters()))


def bench_image(args, out, cases):
    """Writes ``train_siddm_image.{json,md}``; rows of cases not measured this time are kept from the file."""
    path = out / "train_siddm_image.json"
    rows = json.loads(path.read_text()) if path.exists() else {}
    for case in cases:
        cfg = config(case, out / f"_{case}", batch=args.batch)
        iters, warmup = args.image_iters, 2
        bare, ours = interleaved(lambda: run_bare(cfg, iters, warmup), lambda: run_siddm(cfg, iters, warmup),  # noqa: B023
                                 args.repeats)
        parts: dict = {}
        for _ in range(args.repeats):  # the parts, with R1 on every other iteration to time both D steps
            run_bare(cfg, max(iters, 4), warmup, parts=parts, r1_every=2)
        g, d = _params(cfg)
        bs = int(cfg.dataset.batch_size)
        lazy = int(cfg.model.objective.lazy_reg)
        part_ms = {k: 1e3 * statistics.median(v) for k, v in parts.items()}
        command = f"python bench/train_siddm.py --case {case}" + (f" --batch {args.batch}" if args.batch else "")
        r = {**summary(ours, bare), "batch_size": bs, "iters": iters, "repeats": args.repeats,
             "threads": torch.get_num_threads(), "generator_params": g, "discriminator_params": d,
             "images_per_s": bs / statistics.median(ours), "lazy_reg": lazy, "parts_ms": part_ms,
             "r1_ms_per_iteration": (part_ms.get("d_step_r1", 0) - part_ms["d_step"]) / lazy,
             "command": command, "note": args.note}
        rows[case] = r
        print(f"{case}: siddm_lab {r['siddm_lab_s_per_iter']:.3f} s/iter ({r['images_per_s']:.1f} images/s), bare "
              f"{r['bare_s_per_iter']:.3f}, ratio {r['ratio']:.3f} [{r['ratio_min']:.3f}, {r['ratio_max']:.3f}]; "
              f"parts ms {', '.join(f'{k} {v:.0f}' for k, v in part_ms.items())}", flush=True)
        path.write_text(json.dumps(rows, indent=2) + "\n")  # after each case: a later failure keeps it
    (out / "train_siddm_image.md").write_text(image_table(rows))


def image_table(rows: dict) -> str:
    lines = ["# SIDDM image training iteration (D + G): siddm_lab vs bare PyTorch (CPU)", "",
             "Each row: median over its `repeats` interleaved runs of `iters` iterations each (after 2 warm-up), "
             "at the row's torch threads, random images of the dataset's shape.", "",
             "| case | G / D params | batch | siddm_lab s/iter (min) | bare s/iter (min) | images/s | "
             "ratio median (goal <= 1.10) | ratio min | ratio max | runs x iterations | threads |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for case, r in rows.items():
        lines.append(f"| {case} | {r['generator_params'] / 1e6:.2f}M / {r['discriminator_params'] / 1e6:.2f}M | "
                     f"{r['batch_size']} | {r['siddm_lab_s_per_iter']:.3f} ({r['siddm_lab_min']:.3f}) | "
                     f"{r['bare_s_per_iter']:.3f} ({r['bare_min']:.3f}) | {r['images_per_s']:.1f} | {r['ratio']:.3f} | "
                     f"{r['ratio_min']:.3f} | {r['ratio_max']:.3f} | {r['repeats']} x {r['iters']} | {r['threads']} |")
    lines += ["", "Parts of the bare iteration (median ms; R1 on every other iteration to time it; the recipe runs "
              "it every `lazy_reg` iterations):", "",
              "| case | D step | D step with R1 | G step | EMA (G and D) | R1 per iteration at lazy_reg |",
              "|---|---|---|---|---|---|"]
    for case, r in rows.items():
        p = r["parts_ms"]
        lines.append(f"| {case} | {p['d_step']:.0f} | {p.get('d_step_r1', float('nan')):.0f} | {p['g_step']:.0f} | "
                     f"{p['ema']:.1f} | {r['r1_ms_per_iteration']:.1f} (every {r['lazy_reg']}) |")
    lines += ["", "How each row was measured:", ""]
    for case, r in rows.items():
        lines.append(f"- **{case}**: `{r.get('command', 'python bench/train_siddm.py --case ' + case)}`. "
                     f"{r.get('note', '')}".rstrip())
    return "\n".join(lines) + "\n"


OPTIONS = {
    "channels_last": ["callbacks.speed.channels_last=true"],
    "bf16-mixed": ["trainer.precision=bf16-mixed"],
    "compile": ["callbacks.speed.compile=true"],
}


def bench_options(args, out, names):
    base = config("mnist", out / "_opt_base")
    rows = {}
    for name in names:
        cfg = config("mnist", out / f"_opt_{name}", OPTIONS[name])
        # bf16 autocast is ~20x slower on CPUs without native bf16; compile pays its compilation in warm-up
        iters, warmup = (2, 1) if name == "bf16-mixed" else (args.image_iters, 3 if name == "compile" else 2)
        base_r, opt_r = interleaved(lambda: run_siddm(base, iters, warmup), lambda: run_siddm(cfg, iters, warmup),  # noqa: B023
                                    args.repeats)
        ratios = [o / b for o, b in zip(opt_r, base_r)]
        rows[name] = {"option_s_per_iter": statistics.median(opt_r), "fp32_s_per_iter": statistics.median(base_r),
                      "speedup": 1 / statistics.median(ratios), "ratio": statistics.median(ratios),
                      "ratio_min": min(ratios), "ratio_max": max(ratios), "iters": iters, "all_option": opt_r,
                      "all_fp32": base_r}
        print(f"{name}: {rows[name]['option_s_per_iter']:.3f} s/iter vs fp32 {rows[name]['fp32_s_per_iter']:.3f}, "
              f"ratio {rows[name]['ratio']:.3f} [{rows[name]['ratio_min']:.3f}, {rows[name]['ratio_max']:.3f}]",
              flush=True)
    (out / "train_siddm_options.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# Speed options on the MNIST recipe (siddm_lab iteration, CPU)", "",
             f"Each option against the fp32 default, interleaved, median over {args.repeats} runs, "
             f"{torch.get_num_threads()} torch thread(s). Ratio = option time / fp32 time (< 1 is faster).", "",
             "| option | override | s/iter | fp32 s/iter | ratio median | min | max |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | `{' '.join(OPTIONS[name])}` | {r['option_s_per_iter']:.3f} | "
                     f"{r['fp32_s_per_iter']:.3f} | {r['ratio']:.3f} | {r['ratio_min']:.3f} | {r['ratio_max']:.3f} |")
    if args.note:
        lines += ["", args.note]
    (out / "train_siddm_options.md").write_text("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", nargs="+", default=["all"],
                    help="toy | mnist | cifar10 | image (mnist and cifar10) | options | all")
    ap.add_argument("--options", nargs="+", default=list(OPTIONS), help="for --case options: which to measure")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=200, help="timed iterations per run (toy)")
    ap.add_argument("--image-iters", type=int, default=5, help="timed iterations per run (image cases)")
    ap.add_argument("--batch", type=int, default=None,
                    help="image cases: batch size instead of the case's (mnist: its recipe's; cifar10: 8)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--note", default="", help="a line on the conditions, written under each table")
    args = ap.parse_args()
    if args.repeats < 5:
        ap.error("--repeats must be >= 5 (the spread needs them)")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = set(args.case)
    if cases & {"all", "toy"}:
        bench_toy(args, out)
    image = [c for c in ("mnist", "cifar10") if cases & {"all", "image", c}]
    if image:
        bench_image(args, out, image)
    if cases & {"all", "options"}:
        bench_options(args, out, args.options)


if __name__ == "__main__":
    main()
