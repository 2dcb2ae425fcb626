"""The papers' image recipes on the CPU: parameters, FLOPs per training iteration and per sample, and the
time and peak memory of one iteration at the recipe's real per-GPU batch, for each image experiment; plus
the GPU-hours those FLOPs project to (an estimate: counted FLOPs over an ASSUMED sustained rate, stated).

FLOPs are counted with torch's FLOP formulas (``torch.utils.flop_counter``'s registry, applied by a plain
dispatch mode: FlopCounterMode's module hooks break R1's double backward) over whole siddm_lab iterations (D step
with R1 and without, G step, EMA) at batch 2 and scaled to the batch; R1 is amortised over ``lazy_reg``.
The per-iteration time and memory run each case in a fresh process (peak RSS of that process); batches are
random images of the dataset's shape (the time does not depend on the pixels).

    python bench/image_recipes.py [--real-batch ddgan_cifar10 siddm_cifar10 ...] [--threads 1]
Writes ``bench/results/image_recipes.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = {  # name: overrides (the experiment as a user runs it, on one CPU process)
    "ddgan_cifar10": ["experiment=ddgan_cifar10"],
    "siddm_cifar10": ["experiment=siddm_cifar10"],
    "ddgan_celebahq256": ["experiment=table_celebahq256", "model=ddgan_image", "ablation=no_afd_no_reg"],
    "siddm_celebahq256": ["experiment=table_celebahq256", "model=siddm_image"],
    "siddm_imagenet64": ["experiment=table_imagenet64", "model=siddm_image"],
}
CPU = ["trainer=cpu", "trainer.devices=1", "trainer.precision=32-true"]
ASSUMED_TFLOPS = (50.0, 150.0)  # sustained model FLOP/s per GPU: fp32/TF32-like and bf16-like (assumptions)


def _cfg(case, batch, out):
    from bench.train_siddm import COMMON
    from siddm_lab.config import compose

    cfg = compose([*CASES[case], *CPU, *COMMON, "paths.data_dir=/nonexistent"], output_dir=out)
    cfg.dataset.batch_size = batch
    return cfg


def _flop_mode():
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    registry = FlopCounterMode(display=False).flop_registry

    class Flops(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if func._overloadpacket in registry:
                Flops.total += registry[func._overloadpacket](*args, **kwargs, out_val=out)
            return out

    return Flops


def count_flops(case, out) -> dict:
    """FLOPs of one iteration per sample, with R1 and without, at batch 2."""
    import torch

    from bench.train_siddm import run_siddm

    res = {}
    for iters, key in ((1, "with_r1"), (2, "two")):  # iteration 0 carries R1 (step % lazy_reg == 0)
        cfg = _cfg(case, 2, out)
        mode = _flop_mode()
        with mode():
            run_siddm(cfg, iters, 0)
        res[key] = mode.total / 2
    cfg = _cfg(case, 2, out)
    lazy = int(cfg.model.objective.lazy_reg)
    plain = res["two"] - res["with_r1"]
    per_sample = plain + (res["with_r1"] - plain) / lazy
    from hydra.utils import instantiate

    torch.manual_seed(0)
    model = instantiate(cfg.model)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"params_g": count(model.generator), "params_d": count(model.discriminator),
            "flops_per_sample_iteration": per_sample, "flops_r1_extra_per_sample": res["with_r1"] - plain,
            "lazy_reg": lazy}


def one_iteration(case, out, threads) -> dict:
    """Seconds of the 2nd and 3rd iteration and peak RSS at the recipe's per-GPU batch (run in this process)."""
    import torch

    from bench.train_siddm import run_siddm
    from siddm_lab.config import compose

    torch.set_num_threads(threads)
    batch = int(compose([*CASES[case]]).dataset.batch_size)
    cfg = _cfg(case, batch, out)
    t0 = time.perf_counter()
    s = run_siddm(cfg, 2, 1)
    return {"batch_per_gpu": batch, "cpu_s_per_iteration": s, "images_per_s": batch / s,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "wall_s": time.perf_counter() - t0, "threads": threads}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real-batch", nargs="*", default=["ddgan_cifar10", "siddm_cifar10", "ddgan_celebahq256"],
                   help="cases whose iteration is timed at the real per-GPU batch (minutes each on a CPU)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args()
    import tempfile

    import torch

    tmp = Path(tempfile.mkdtemp())
    if args.child:
        print(json.dumps(one_iteration(args.child, tmp, args.threads)))
        return
    torch.set_num_threads(args.threads)
    from siddm_lab.config import compose

    rows = {}
    for case in CASES:
        cfg = compose(CASES[case])
        r = count_flops(case, tmp)
        r.update(batch_per_gpu=int(cfg.dataset.batch_size), devices=int(cfg.trainer.devices),
                 max_steps=int(cfg.trainer.max_steps))
        gpu_flops = r["flops_per_sample_iteration"] * r["batch_per_gpu"] * r["max_steps"]  # per GPU
        r["projected_gpu_hours"] = {f"{t:g} TFLOP/s": gpu_flops / (t * 1e12) / 3600 * r["devices"]
                                    for t in ASSUMED_TFLOPS}
        if case in args.real_batch:
            proc = subprocess.run([sys.executable, __file__, "--child", case, "--threads", str(args.threads)],
                                  capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{case}: {proc.stderr[-2000:]}")
            r.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        rows[case] = r
        print(case, json.dumps(r))
    out = Path(args.out)
    (out / "image_recipes.json").write_text(json.dumps(rows, indent=1))
    lines = ["# The image recipes on the CPU: size, FLOPs, one iteration at the real batch", "",
             f"`python bench/image_recipes.py --threads {args.threads}` (CPU, fp32, {args.threads} thread(s)). "
             "FLOPs counted with torch's FLOP formulas over whole siddm_lab iterations at batch 2, scaled to the "
             "batch (R1 amortised over lazy_reg). GPU-hours = FLOPs per iteration x per-GPU batch x iterations x "
             "GPUs over an ASSUMED sustained rate per GPU: an estimate until the rate is measured on a GPU.", "",
             "| experiment | G params | D params | GFLOP / sample / iteration | per-GPU batch x GPUs | iterations "
             "| GPU-hours at 50 / 150 TFLOP/s | CPU s / iteration at the real batch | peak RSS GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for case, r in rows.items():
        gh = list(r["projected_gpu_hours"].values())
        cpu = f"{r['cpu_s_per_iteration']:.1f}" if "cpu_s_per_iteration" in r else "—"
        mem = f"{r['peak_rss_gib']:.1f}" if "peak_rss_gib" in r else "—"
        lines.append(f"| {case} | {r['params_g'] / 1e6:.2f}M | {r['params_d'] / 1e6:.2f}M | "
                     f"{r['flops_per_sample_iteration'] / 1e9:.1f} | {r['batch_per_gpu']} x {r['devices']} | "
                     f"{r['max_steps']:,} | {gh[0]:.0f} / {gh[1]:.0f} | {cpu} | {mem} |")
    (out / "image_recipes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
