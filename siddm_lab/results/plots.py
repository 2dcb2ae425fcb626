"""Plots of a sweep's rows: metric against NFE, time-to-quality curves, ablation bars and side-by-side
scatter plots of 2-D samples (matplotlib is imported when a plot is drawn)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from siddm_lab.errors import DataError
from siddm_lab.results.jobs import _is_number, _num, read_history
from siddm_lab.results.tables import _lookup, _mean, _sort_key, _std


def plot_curves(rows: list[dict], sweep_dir: Path, metric: str, group: str | None, path: Path,
                title: str = "", log_y: bool = False) -> Path | None:
    """Time-to-quality: ``metric`` against iterations and against training seconds, one line per value of
    ``group`` (the mean over its models, e.g. seeds, with the min-max band); ``log_y``: a log axis for
    the metric (values <= 0 are left out of it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[list[dict]]] = defaultdict(list)
    for r in rows:
        hist = [{k: float(h[k]) for k in ("iteration", "train_seconds", metric)}
                for h in read_history(sweep_dir / r["job"])
                if all(_is_number(h.get(k)) for k in ("iteration", "train_seconds", metric))]
        if hist:
            series[str(r.get(group, "")) if group else r["job"]].append(hist)
    if not series:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for name in sorted(series, key=_sort_key):
        runs = series[name]
        its = sorted({h["iteration"] for run in runs for h in run})
        by_it = [[h[metric] for run in runs for h in run if h["iteration"] == i] for i in its]
        secs = [_mean([h["train_seconds"] for run in runs for h in run if h["iteration"] == i]) for i in its]
        mean = [_mean(v) for v in by_it]
        label = f"{group}={name}" if group else name
        for ax, x in zip(axes, (its, secs)):
            line, = ax.plot(x, mean, "o-", ms=3, label=f"{label} (n={len(runs)})")
            if len(runs) > 1:
                ax.fill_between(x, [min(v) for v in by_it], [max(v) for v in by_it], color=line.get_color(), alpha=0.15)
    axes[0].set_xlabel("iterations")
    axes[1].set_xlabel("training seconds (evaluations excluded)")
    for ax in axes:
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if log_y:
            ax.set_yscale("log", nonpositive="mask")
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def check_log_axis(rows: list[dict], metric: str) -> None:
    """A log metric axis needs every plotted value > 0: a DataError names each job that has another."""
    bad = [(r.get("job", "?"), r[metric]) for r in rows
           if metric in r and "nfe" in r and not float(r[metric]) > 0]
    if bad:
        shown = "; ".join(f"{job}: {metric}={v}" for job, v in bad[:10]) + ("; ..." if len(bad) > 10 else "")
        raise DataError(f"a log axis needs {metric} > 0, and {len(bad)} job(s) have another value ({shown}): plot "
                        f"without --logy, or collect without those jobs")


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def line_styles(n: int) -> list[dict]:
    """``n`` distinct (colour, marker, line style) for a plot's series: the ten tab10 colours, then the same
    colours with other markers and a dashed line, so a plot of more than ten series has no two alike."""
    return [{"color": f"C{i % 10}", "marker": _MARKERS[(i // 10) % len(_MARKERS)],
             "linestyle": ("-", "--", ":", "-.")[(i // 10) % 4]} for i in range(n)]


def plot_vs_nfe(rows: list[dict], metric: str, group: str | None, path: Path, title: str = "",
                log_y: bool = False, ylim: tuple[float, float] | None = None) -> Path | None:
    """``metric`` against NFE (log x), one line per ``group`` value; ``log_y`` puts the metric on a log axis too
    (rows that span decades, e.g. DDIM's σ̂ row beside the others); it needs every value > 0. ``ylim`` fixes
    the metric axis (cells outside it, e.g. a diverged sampler's, leave the plot and stay in the table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = defaultdict(list)
    for r in rows:
        if metric in r and "nfe" in r:
            series[str(r.get(group, "")) if group else ""].append((float(r["nfe"]), float(r[metric])))
    if not series:
        return None
    if log_y:
        check_log_axis(rows, metric)
    names = sorted(series, key=_sort_key)
    many = len(names) > 6  # the legend goes beside the axes, where it hides no point
    fig, ax = plt.subplots(figsize=(8, 4) if many else (5.5, 4), dpi=100)
    for name, style in zip(names, line_styles(len(names))):
        by_nfe = defaultdict(list)  # repeats of a cell (seeds): their mean ± std, and each as a faint dot
        for nfe, v in series[name]:
            by_nfe[nfe].append(v)
        xs = sorted(by_nfe)
        means = [_mean(by_nfe[x]) for x in xs]
        stds = [_std(by_nfe[x]) for x in xs]
        single = len(xs) == 1  # a one-NFE model (a GAN, a student): a larger point, drawn over the lines
        ax.errorbar(xs, means, yerr=stds if any(stds) else None, capsize=3, ms=7 if single else 4,
                    zorder=3 if single else 2, label=f"{group}={name}" if group else None, **style)
        if any(len(by_nfe[x]) > 1 for x in xs):
            ax.scatter([nfe for nfe, _ in series[name]], [v for _, v in series[name]], s=8, alpha=0.35,
                       color=style["color"])
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("NFE (network evaluations)")
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title, fontsize=9)
    if group:
        ax.legend(fontsize=7, **({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if many else {}))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_bars(rows: list[dict], row_key: str, metric: str, path: Path, paper: dict | None = None,
              title: str = "") -> Path | None:
    """Bar chart (ablations): mean ± std of ``metric`` per value of ``row_key``, with the paper's
    number beside each bar when given ({row: value}, on its own scale: a different dataset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = defaultdict(list)
    for r in rows:
        if metric in r and row_key in r:
            groups[str(r[row_key])].append(float(r[metric]))
    if not groups:
        return None
    names = sorted(groups, key=_sort_key)
    means = [_mean(groups[n]) for n in names]
    stds = [_std(groups[n]) for n in names]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names)), 4), dpi=100)
    x = list(range(len(names)))
    ax.bar(x, means, yerr=stds, capsize=3, color="tab:blue", label=f"ours ({metric})")
    ax.set_ylabel(metric)
    if paper:
        vals = [_lookup(paper, n) for n in names]
        if any(isinstance(v, (int, float)) for v in vals):
            ax2 = ax.twinx()
            ax2.plot(x, [v if isinstance(v, (int, float)) else float("nan") for v in vals], "o", color="tab:red",
                     label="paper")
            ax2.set_ylabel("paper", color="tab:red")
            ax2.legend(loc="upper right", fontsize=7)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.legend(loc="upper left", fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _toy_reference(job: Path):
    """(reference points, centres) of a toy job's dataset, rebuilt from its resolved config.yaml (in the
    job folder, or the ensemble's folder above a member's)."""
    try:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        cfg_file = next(p / "config.yaml" for p in (job, *job.parents) if (p / "config.yaml").is_file())
        dm = instantiate(OmegaConf.load(cfg_file).dataset)
        centers = getattr(dm.distribution, "centers", None)
        return dm.reference.numpy(), None if centers is None else centers.numpy()
    except Exception:  # noqa: BLE001 - the plot is still useful without the data layer
        return None, None


def plot_scatter(rows: list[dict], sweep_dir: Path, keys: list[str], path: Path,
                 metrics=("modes_covered", "fd_2d", "fd_mnist_classifier", "fid")) -> Path | None:
    """Side by side, one panel per value of ``keys`` (the first job of each group, e.g. seed 0), titled with
    the values, NFE, sampling time and ``metrics``: scatter plots of 2-D samples, or grids of the first 64
    samples of image jobs (uint8 [N, C, H, W] in samples.npz)."""
    import numpy as np

    from siddm_lab.utils import plotting

    groups: dict[tuple, dict] = {}
    for r in sorted(rows, key=lambda r: _sort_key(r.get("seed", 0))):
        groups.setdefault(tuple(str(r.get(k, "")) for k in keys), r)
    panels, reference = [], None
    for label in sorted(groups, key=lambda t: tuple(_sort_key(v) for v in t)):
        r = groups[label]
        job = sweep_dir / r["job"]
        if not (job / "samples.npz").is_file():
            continue
        x = np.load(job / "samples.npz")["samples"]
        images = x.ndim == 4
        if not images and (x.ndim != 2 or x.shape[1] != 2):
            return None
        if reference is None and not images:
            reference, _ = _toy_reference(job)
        stats = [f"{m}={_num(r[m]):.3g}" for m in metrics if m in r and isinstance(_num(r[m]), float)]
        if "sample_seconds" in r:
            stats.append(f"{float(r['sample_seconds']):.2g}s")
        title = " ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, label))
        panels.append((f"{title} NFE={r.get('nfe', '?')}\n" + " ".join(stats), x))
    if not panels:
        return None
    ncols = len({label[-1] for label in groups}) if len(keys) > 1 else None  # one row per first-key value
    if len({x.ndim for _, x in panels}) > 1:  # points and images cannot share a figure
        return None
    if panels[0][1].ndim == 4:
        return plotting.side_by_side_images(panels, path, ncols=ncols)
    return plotting.side_by_side(panels, path, reference=reference, ncols=ncols)
