"""The one evaluation path: sample a model with a sampler, score the samples with the data's metrics,
save them. Periodic evaluation during training, the end-of-training evaluation and ``siddm-sample``
all go through ``evaluate`` (or its two halves, ``draw`` and ``score``)."""

from __future__ import annotations

import time
from pathlib import Path

import torch


def draw(model, sampler, n: int, seed: int, batch_size: int | None = None, progress: bool = False):
    """(samples, seconds): n samples of ``model`` with ``sampler`` from the seed ``seed`` (x_T and every
    batch's noise follow from it; the same on any device)."""
    t0 = time.perf_counter()
    samples = model.sample(n, sampler=sampler, generator=torch.Generator().manual_seed(int(seed)),
                           batch_size=batch_size, progress=progress)
    return samples, time.perf_counter() - t0


def score(model, samples: torch.Tensor, datamodule, out_dir, *, stem: str | None = "samples", title: str = "",
          strict: bool = False) -> list[dict]:
    """The data's metrics of each model's samples (one per member of an ensemble: ``samples`` [E, n, ...])
    and, unless ``stem`` is None, the samples saved as ``<stem>.npz`` + ``<stem>.png`` in the model's folder
    (``out_dir``, or ``out_dir/seed_<s>`` per member). Returns ``[{"seed": s | None, "dir": folder, **metrics}]``."""
    results = []
    for seed, member_dir, x in model.member_outputs(samples, None if out_dir is None else Path(out_dir)):
        metrics = {k: float(v) for k, v in datamodule.evaluate(x, strict=strict).items()}
        if stem is not None and member_dir is not None:
            label = title + ("" if seed is None else f" seed={seed}")
            if "modes_covered" in metrics:
                label += f" modes={metrics['modes_covered']:.0f} HQ={metrics['hq_ratio']:.2f} FD={metrics['fd_2d']:.3g}"
            datamodule.save_samples(x, member_dir, stem=stem, title=label.strip())
        results.append({"seed": seed, "dir": member_dir, **metrics, "num_samples": len(x)})
    return results


def evaluate(model, sampler, datamodule, n: int, seed: int, out_dir, *, batch_size: int | None = None,
             stem: str | None = "samples", title: str | None = None, strict: bool = False,
             progress: bool = False) -> list[dict]:
    """Sample, score and save (``draw`` then ``score``): one dict per model with the metrics, the
    sampler's settings (sampler, steps, NFE, ...) and the sampling wall time per model."""
    sampler = model.get_sampler(sampler)
    samples, seconds = draw(model, sampler, n, seed, batch_size, progress)
    settings = sampler.settings()
    if title is None:
        title = f"{type(model).__name__} T={model.diffusion.num_timesteps} {settings['sampler']} NFE={settings['nfe']}"
    results = score(model, samples, datamodule, out_dir, stem=stem, title=title, strict=strict)
    for r in results:
        r.update(settings, sample_seconds=seconds / (model.members or 1))
    return results
