"""Plots written by runs: scatter plots for 2-D samples, image grids."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _points(ax, x: np.ndarray, reference: np.ndarray | None, max_points: int, labels: bool = False):
    """Samples over the data (grey), axes fitted to the data."""
    if reference is not None:
        r = reference[:max_points]
        ax.scatter(r[:, 0], r[:, 1], s=2, c="lightgray", label="data" if labels else None, rasterized=True)
    x = x[:max_points]
    ax.scatter(x[:, 0], x[:, 1], s=2, c="tab:blue", alpha=0.6, label="samples" if labels else None, rasterized=True)
    if reference is not None:
        lo, hi = reference.min(0), reference.max(0)
        pad = 0.15 * (hi - lo)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    ax.set_aspect("equal")


def scatter(x: np.ndarray, path, reference: np.ndarray | None = None, centers: np.ndarray | None = None,
            title: str | None = None, max_points: int = 5000):
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    _points(ax, x, reference, max_points, labels=True)
    if centers is not None:
        ax.scatter(centers[:, 0], centers[:, 1], s=25, marker="x", c="tab:red", label="modes")
    return _finish(fig, ax, path, title, markerscale=3)


def _save(fig, ax, path, title: str | None) -> Path:
    """Title, save and close: the end of every one-panel plot."""
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _finish(fig, ax, path, title: str | None, markerscale: float = 1.0) -> Path:
    """Legend, then ``_save``: the end of every one-panel 2-D plot."""
    ax.legend(loc="upper right", fontsize=7, markerscale=markerscale)
    return _save(fig, ax, path, title)


def pairs(targets: np.ndarray, decoded: np.ndarray, path, reference: np.ndarray | None = None,
          title: str | None = None):
    """2-D points: each target (circle) joined to what was decoded for it (cross), over the data in grey."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if reference is not None:
        ax.scatter(reference[:2000, 0], reference[:2000, 1], s=2, c="lightgrey", label="data")
    for a, b in zip(targets, decoded):
        ax.plot([a[0], b[0]], [a[1], b[1]], c="tab:blue", lw=0.8)
    ax.scatter(targets[:, 0], targets[:, 1], s=30, facecolors="none", edgecolors="tab:green", label="target")
    ax.scatter(decoded[:, 0], decoded[:, 1], s=30, marker="x", c="tab:red", label="decoded")
    return _finish(fig, ax, path, title)


def side_by_side(panels: list[tuple[str, np.ndarray]], path, reference: np.ndarray | None = None,
                 max_points: int = 5000, ncols: int | None = None):
    """One scatter panel per (title, points), same axes; used to compare methods. ``ncols`` panels
    per row (default: all in one row)."""
    ncols = min(ncols or len(panels), len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 4 * nrows), dpi=100, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, x) in zip(axes.flat, panels):
        _points(ax, x, reference, max_points)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _grid(x: np.ndarray, nrow: int | None = None) -> np.ndarray:
    import torch
    from torchvision.utils import make_grid

    t = torch.as_tensor(np.asarray(x))
    nrow = nrow or int(np.ceil(np.sqrt(len(t))))
    grid = make_grid(t, nrow=nrow, padding=2, pad_value=255).permute(1, 2, 0).numpy()
    return grid.squeeze(-1) if grid.shape[-1] == 1 else grid


def side_by_side_images(panels: list[tuple[str, np.ndarray]], path, max_images: int = 64, ncols: int | None = None):
    """One grid of the first ``max_images`` uint8 images [N, C, H, W] per (title, images), side by side."""
    ncols = min(ncols or len(panels), len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 4.3 * nrows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, x) in zip(axes.flat, panels):
        grid = _grid(x[:max_images])
        ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")  # square image axes: tight_layout alone cuts two-line titles
    plt.close(fig)
    return Path(path)


def image_grid(x: np.ndarray, path, title: str | None = None, nrow: int | None = None):
    """uint8 images [N, C, H, W] -> one PNG grid."""
    grid = _grid(x, nrow)
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None)
    ax.axis("off")
    return _save(fig, ax, path, title)
