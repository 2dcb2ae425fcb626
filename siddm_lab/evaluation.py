"""The one evaluation path: sample a model with a sampler, score the samples with the data's metrics,
save them. Periodic evaluation during training, the end-of-training evaluation and ``siddm-sample``
all go through ``evaluate`` (or its two halves, ``draw`` and ``score``)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from siddm_lab.errors import NonFiniteSamplesError, SiddmError
from siddm_lab.metrics import toy as toy_metrics
from siddm_lab.utils.measure import Measure

log = logging.getLogger(__name__)


def data_metrics(datamodule, samples: torch.Tensor, strict: bool = False) -> dict[str, float]:
    """The metrics of samples (model space) against the datamodule's data: ``toy_metrics`` for a 2-D
    distribution, ``image_metrics`` for images."""
    if hasattr(datamodule, "distribution"):
        return toy_metrics_of(datamodule, samples)
    return image_metrics(datamodule, samples, strict)


def toy_metrics_of(dm, samples: torch.Tensor) -> dict[str, float]:
    """2-D Fréchet distance, MMDs (polynomial, standardised polynomial as the released code, RBF) and,
    for a mixture with known centres, modes covered / high-quality ratio / mode KL."""
    samples = dm.to_data_space(samples.detach().float().cpu())
    ref = dm.reference
    x, y = samples[: dm.mmd_max_points], ref[: dm.mmd_max_points]
    mu, sd = ref.double().mean(), ref.double().std(unbiased=False)  # the released code's scalar standardisation
    out = {
        "fd_2d": toy_metrics.frechet_distance_2d(samples, ref),
        "mmd_poly2": toy_metrics.mmd(x, y, kernel="poly", degree=2),
        "mmd_poly2_std": toy_metrics.mmd((x.double() - mu) / sd, (y.double() - mu) / sd, kernel="poly", degree=2),
        "mmd_rbf": toy_metrics.mmd(x, y, kernel="rbf"),
    }
    d = dm.distribution
    if d.centers is not None:
        out.update(toy_metrics.mode_metrics(samples, d.centers, d.std))
    return out


_warned: set[str] = set()


def image_metrics(dm, samples: torch.Tensor, strict: bool = False) -> dict[str, float]:
    """Pixel statistics, plus the configured image metrics (``dataset.metrics.names``: any of
    fd_mnist_classifier, fid, is, kid, prc; see ``siddm_lab.metrics.image``).

    A metric whose network is unavailable (a named MNIST classifier file that is missing, no local Inception
    weights) raises when ``strict`` (siddm-sample) and is left out with a warning otherwise (training)."""
    from siddm_lab.metrics.image import compute_image_metrics

    x = samples.detach().float().cpu()
    out = {
        "sample_mean": float(x.mean()),
        "sample_std": float(x.std()),
        "frac_out_of_range": float(((x < -1.0) | (x > 1.0)).float().mean()),
    }
    uint8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if not dm.metric_names:
        return out

    def compute(names):
        stats = getattr(dm, "reference_stats", None) if "fid" in names else None
        only_stats = stats is not None and set(names) <= {"fid", "is"}  # no reference images needed
        return compute_image_metrics(uint8, None if only_stats else dm.metric_reference, names,
                                     classifier_path=dm.classifier_path, inception_weights=dm.inception_weights,
                                     resize=getattr(dm, "inception_resize", "antialias"), reference_stats=stats)

    try:  # all at once: the Inception metrics share one pass over the images
        out.update(compute(dm.metric_names))
    except SiddmError:
        if strict:
            raise
        for name in dm.metric_names:  # keep what can be computed, say what cannot
            try:
                out.update(compute([name]))
            except SiddmError as e:
                if name not in _warned:
                    _warned.add(name)
                    log.warning("metric %s skipped: %s", name, e)
    return out


def draw(model, sampler, n: int, seed: int, batch_size: int | None = None, progress: bool = False,
         measure: dict | None = None):
    """(samples, seconds): n samples of ``model`` with ``sampler`` from the seed ``seed`` (x_T and every
    batch's noise follow from it; the same on any device). With ``measure`` (a dict), also fills it with
    the wall time and peak memory of the sampling (``siddm_lab.utils.measure``)."""
    with Measure(model.device) as m:
        samples = model.sample(n, sampler=sampler, generator=torch.Generator().manual_seed(int(seed)),
                               batch_size=batch_size, progress=progress)
    if measure is not None:
        measure.update(m.as_dict())
    return samples, m.seconds


def score(model, samples: torch.Tensor, datamodule, out_dir, *, stem: str | None = "samples", title: str = "",
          strict: bool = False, subdir: str | None = None) -> list[dict]:
    """The data's metrics of each model's samples (one per member of an ensemble: ``samples`` [E, n, ...])
    and, unless ``stem`` is None, the samples saved as ``<stem>.npz`` + ``<stem>.png`` in the model's folder
    (``out_dir``, or ``out_dir/seed_<s>`` per member; inside its ``subdir`` if given). Returns
    ``[{"seed": s | None, "dir": folder, **metrics}]`` (with ``"png"``: the plot, when saved)."""
    results = []
    for seed, member_dir, x in model.member_outputs(samples, None if out_dir is None else Path(out_dir)):
        metrics = {k: float(v) for k, v in data_metrics(datamodule, x, strict).items()}
        saved = {}
        if stem is not None and member_dir is not None:
            label = title + ("" if seed is None else f" seed={seed}")
            if "modes_covered" in metrics:
                label += f" modes={metrics['modes_covered']:.0f} HQ={metrics['hq_ratio']:.2f} FD={metrics['fd_2d']:.3g}"
            folder = member_dir if subdir is None else Path(member_dir) / subdir
            saved["png"] = datamodule.save_samples(x, folder, stem=stem, title=label.strip())
        results.append({"seed": seed, "dir": member_dir, **metrics, "num_samples": len(x), **saved})
    return results


_DIVERGED = ("the model or the sampler diverged, so no result is reported: check the training loss (a learning rate "
             "too high, e.g. model.optimizer.lr) and the sampler's settings (e.g. sampler.eta)")


def _sampler_words(settings: dict) -> str:
    return ", ".join(f"{k}={settings[k]}" for k in ("sampler", "nfe", "eta") if k in settings)


def check_finite_samples(model, samples: torch.Tensor, settings: dict) -> None:
    """Stop an evaluation whose samples hold NaN or infinite values (per member of an ensemble)."""
    bad = ~torch.isfinite(samples.detach().flatten(samples.dim() - len(model.data_shape)))
    if not bad.any():
        return
    per_sample = bad.any(-1)
    if model.members is not None:
        counts = per_sample.sum(-1).tolist()
        which = "; ".join(f"seed {s}: {c} of {per_sample.shape[-1]}" for s, c in zip(model.member_seeds, counts) if c)
        raise NonFiniteSamplesError(f"samples hold NaN or infinite values ({which}; {_sampler_words(settings)}): "
                                    f"{_DIVERGED}")
    raise NonFiniteSamplesError(f"{int(per_sample.sum())} of {per_sample.numel()} samples hold NaN or infinite "
                                f"values ({_sampler_words(settings)}): {_DIVERGED}")


def check_finite_metrics(results: list[dict], settings: dict) -> None:
    """Stop an evaluation whose metrics came out NaN from finite samples (values so large that the statistics
    overflow)."""
    for r in results:
        nan = sorted(k for k, v in r.items() if isinstance(v, float) and v != v)
        if nan:
            who = "" if r.get("seed") is None else f" of the member with seed {r['seed']}"
            raise NonFiniteSamplesError(f"the metrics {', '.join(nan)}{who} are NaN ({_sampler_words(settings)}; "
                                        f"the samples are finite but too large to measure): {_DIVERGED}")


def evaluate(model, sampler, datamodule, n: int, seed: int, out_dir, *, batch_size: int | None = None,
             stem: str | None = "samples", title: str | None = None, strict: bool = False,
             progress: bool = False) -> list[dict]:
    """Sample, score and save (``draw`` then ``score``): one dict per model with the metrics, the
    sampler's settings (sampler, steps, NFE, ...) and the sampling wall time per model."""
    sampler = model.get_sampler(sampler)
    measured: dict = {}
    samples, seconds = draw(model, sampler, n, seed, batch_size, progress, measured)
    settings = sampler.settings()
    check_finite_samples(model, samples, settings)
    if title is None:
        name = getattr(model, "label", type(model).__name__)
        title = f"{name} T={model.diffusion.num_timesteps} {settings['sampler']} NFE={settings['nfe']}"
    results = score(model, samples, datamodule, out_dir, stem=stem, title=title, strict=strict)
    check_finite_metrics(results, settings)
    for r in results:
        r.pop("png", None)
        r.update(settings, peak_memory_mb=measured.get("peak_memory_mb"),
                 peak_memory_kind=measured.get("peak_memory_kind"), sample_seconds=seconds / (model.members or 1))
    return results
