"""DDIM sampling: siddm_lab (``DiffusionModule.sample`` with ``DDIMSampler``) vs diffusers'
``DDIMScheduler`` loop, same network, batch, timesteps ("leading" spacing) and initial noise, in one
process. Reports the wall-time ratio siddm_lab / diffusers (goal <= 1.0) and each sampler's
overhead per step beyond the network call (total minus S bare network calls, divided by S).
Writes bench/results/sample_ddim.{json,md}.

    python bench/sample_ddim.py [--repeats 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusers import DDIMScheduler  # noqa: E402

from siddm_lab.diffusion import DDIMSampler, GaussianDiffusion  # noqa: E402
from siddm_lab.models import DDPM  # noqa: E402
from siddm_lab.nets import TimeMLP, UNet  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(case: str, device):
    torch.manual_seed(0)
    if case == "toy_mlp":
        net, shape, batch = TimeMLP(2, 256, 3), (2,), 5000
    else:
        net, shape, batch = UNet(1, image_size=32, ch=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                                 attn_resolutions=(8,), dropout=0.0), (1, 32, 32), 64
    for p in net.parameters():  # non-trivial outputs (the UNet's last conv is zero-initialised)
        torch.nn.init.normal_(p, std=0.02)
    diffusion = GaussianDiffusion.from_schedule("linear", 1000)
    model = DDPM(net, diffusion, optimizer=lambda params: torch.optim.SGD(params, lr=0.0))
    model.data_shape = shape
    return model.to(device).eval(), shape, batch


@torch.no_grad()
def time_ours(model, S, batch, device) -> float:
    sampler = DDIMSampler(model.diffusion, 0.0, steps=S, subsequence={"name": "leading"})
    g = torch.Generator().manual_seed(0)
    _sync(device)
    t0 = time.perf_counter()
    model.sample(batch, sampler, generator=g, batch_size=batch)
    _sync(device)
    return time.perf_counter() - t0


@torch.no_grad()
def time_diffusers(model, S, shape, batch, device) -> float:
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", timestep_spacing="leading",
                          set_alpha_to_one=True, clip_sample=False, steps_offset=0)
    sched.set_timesteps(S)
    g = torch.Generator().manual_seed(0)
    _sync(device)
    t0 = time.perf_counter()
    x = torch.randn((batch, *shape), generator=g).to(device)
    for t in sched.timesteps:
        eps = model.net(x, torch.full((batch,), int(t), device=device, dtype=torch.long))
        x = sched.step(eps, t, x, eta=0.0).prev_sample
    x.cpu()
    _sync(device)
    return time.perf_counter() - t0


@torch.no_grad()
def time_net(model, S, shape, batch, device) -> float:
    x = torch.randn((batch, *shape), device=device)
    tt = torch.full((batch,), 500, device=device, dtype=torch.long)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(S):
        model.net(x, tt)
    _sync(device)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cases", default="toy_mlp,mnist_unet")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    device = torch.device(args.device)
    results = {}
    for case in args.cases.split(","):
        model, shape, batch = build(case, device)
        for S in (10, 50):
            time_ours(model, S, batch, device)  # warm-up
            time_diffusers(model, S, shape, batch, device)
            ours, theirs, net = [], [], []
            for _ in range(args.repeats):  # interleaved
                ours.append(time_ours(model, S, batch, device))
                theirs.append(time_diffusers(model, S, shape, batch, device))
                net.append(time_net(model, S, shape, batch, device))
            o, d, n = statistics.median(ours), statistics.median(theirs), statistics.median(net)
            results[f"{case}_S{S}"] = {
                "batch": batch, "S": S, "siddm_lab_s": o, "diffusers_s": d, "network_only_s": n,
                "ratio": o / d, "overhead_per_step_ms_siddm_lab": (o - n) / S * 1e3,
                "overhead_per_step_ms_diffusers": (d - n) / S * 1e3, "device": str(device),
            }
            r = results[f"{case}_S{S}"]
            print(f"{case} S={S}: siddm_lab {o:.3f}s diffusers {d:.3f}s ratio {r['ratio']:.3f}; overhead/step "
                  f"{r['overhead_per_step_ms_siddm_lab']:.2f} ms vs {r['overhead_per_step_ms_diffusers']:.2f} ms",
                  flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    (out / f"sample_ddim{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# DDIM sampling: siddm_lab vs diffusers DDIMScheduler ({device})", "",
             "| case | batch | S | siddm_lab s | diffusers s | ratio (goal <= 1.0) | overhead/step siddm_lab ms |"
             " overhead/step diffusers ms |", "|---|---|---|---|---|---|---|---|"]
    for k, r in results.items():
        lines.append(f"| {k} | {r['batch']} | {r['S']} | {r['siddm_lab_s']:.3f} | {r['diffusers_s']:.3f} | "
                     f"{r['ratio']:.3f} | {r['overhead_per_step_ms_siddm_lab']:.2f} | "
                     f"{r['overhead_per_step_ms_diffusers']:.2f} |")
    (out / f"sample_ddim{suffix}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
