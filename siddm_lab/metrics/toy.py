"""Metrics for 2-D samples: mode coverage for Gaussian mixtures, 2-D Fréchet distance, MMD."""

from __future__ import annotations

import torch

from siddm_lab.metrics.frechet import frechet_distance_from_features


def mode_metrics(samples: torch.Tensor, centers: torch.Tensor, std: float, n_std: float = 3.0,
                 min_frac: float = 0.1) -> dict[str, float]:
    """Mode statistics of samples [N, 2] against a mixture with ``centers`` [K, 2] and ``std``.

    * ``hq_ratio``: fraction of samples within ``n_std``·std of their nearest centre
      ("high-quality" samples, as in VEEGAN/PacGAN/DDGAN's toy evaluation).
    * ``modes_covered``: number of centres that receive at least ``min_frac`` of their
      expected share (N/K) of high-quality samples; with 10% a mode needs e.g. 20 of the
      200 high-quality samples it would get out of N=5000 — a collapsed or dropped mode has
      none, a merely under-weighted one still counts.
    * ``mode_kl``: KL(p || U) of the histogram of nearest centres (all samples) to the uniform
      weights of the mixture, in nats (0 = perfectly balanced, log K = all in one mode).
    """
    x = samples.detach().double().cpu()
    c = torch.as_tensor(centers).double()
    k = len(c)
    dist = torch.cdist(x, c)
    d_min, nearest = dist.min(dim=1)
    hq = d_min <= n_std * std
    hq_counts = torch.bincount(nearest[hq], minlength=k)
    threshold = max(1.0, min_frac * len(x) / k)
    counts = torch.bincount(nearest, minlength=k).double()
    p = counts / counts.sum()
    nz = p > 0
    kl = float((p[nz] * (p[nz] * k).log()).sum())
    return {
        "modes_covered": int((hq_counts >= threshold).sum()),
        "hq_ratio": float(hq.double().mean()),
        "mode_kl": kl,
    }


def frechet_distance_2d(x: torch.Tensor, y: torch.Tensor) -> float:
    """Fréchet distance between Gaussian fits of two point clouds (SIDDM's toy evaluation)."""
    return frechet_distance_from_features(x, y)


def _kernel(a, b, kernel: str, degree: int, gamma: float | None, coef0: float, sigma: float):
    if kernel == "poly":
        g = 1.0 / a.shape[1] if gamma is None else gamma
        return (g * a @ b.T + coef0) ** degree
    if kernel == "rbf":
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * sigma**2))
    raise ValueError(f"kernel={kernel!r} is unknown; allowed: poly, rbf")


def _kernel_sums(a, b, same: bool, block: int = 2048, **kw) -> float:
    """Σ_ij k(a_i, b_j) (without the diagonal when ``same``), in row blocks (bounded memory)."""
    total = 0.0
    for i in range(0, len(a), block):
        k = _kernel(a[i:i + block], b, **kw)
        total += float(k.sum())
        if same:
            total -= float(k.diagonal(offset=i).sum())
    return total


def _poly2_features(x: torch.Tensor, g: float, c: float) -> torch.Tensor:
    """φ with φ(a)·φ(b) = (g a·b + c)²: [g·vec(a aᵀ), sqrt(2gc)·a, c]."""
    outer = (x[:, :, None] * x[:, None, :]).reshape(len(x), -1)
    return torch.cat([g * outer, (2 * g * c) ** 0.5 * x, torch.full((len(x), 1), c, dtype=x.dtype)], dim=1)


def mmd(x: torch.Tensor, y: torch.Tensor, kernel: str = "poly", degree: int = 2, gamma: float | None = None,
        coef0: float = 1.0, sigma: float | None = None) -> float:
    """Unbiased MMD² between samples x [N, D] and y [M, D].

    ``poly``: k(a, b) = (γ a·b + c)^degree with sklearn's defaults γ = 1/D, c = 1 (degree 2 as in
    the SIDDM authors' toy evaluation; degree 3 is KID's kernel). ``rbf``: Gaussian kernel with
    bandwidth ``sigma`` (default: median pairwise distance of the pooled samples). The degree-2
    polynomial kernel of low-dimensional data is summed through its explicit feature map (exact, O(N));
    the others in row blocks.
    """
    x = torch.as_tensor(x).detach().double().cpu().reshape(len(x), -1)
    y = torch.as_tensor(y).detach().double().cpu().reshape(len(y), -1)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError("MMD needs at least 2 samples on each side")
    if kernel == "rbf" and sigma is None:
        pooled = torch.cat([x, y])[:2000]
        d = torch.pdist(pooled)
        sigma = float(d.median()) if len(d) else 1.0
        sigma = sigma if sigma > 0 else 1.0
    if kernel == "poly" and degree == 2 and x.shape[1] <= 16:
        g = 1.0 / x.shape[1] if gamma is None else gamma
        fx, fy = _poly2_features(x, g, coef0), _poly2_features(y, g, coef0)
        sx, sy = fx.sum(0), fy.sum(0)
        xx = float(sx @ sx - (fx * fx).sum())
        yy = float(sy @ sy - (fy * fy).sum())
        xy = float(sx @ sy)
    else:
        kw = {"kernel": kernel, "degree": degree, "gamma": gamma, "coef0": coef0, "sigma": sigma or 1.0}
        xx, yy, xy = _kernel_sums(x, x, True, **kw), _kernel_sums(y, y, True, **kw), _kernel_sums(x, y, False, **kw)
    return xx / (n * (n - 1)) + yy / (m * (m - 1)) - 2 * xy / (n * m)


__all__ = ["frechet_distance_2d", "mmd", "mode_metrics"]
