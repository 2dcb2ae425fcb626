"""Fréchet distance between Gaussians fitted to two sets of features (the formula behind FID)."""

from __future__ import annotations

import numpy as np
import torch


def gaussian_stats(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features x [N, D], in float64."""
    x = torch.as_tensor(x).detach().double().cpu().reshape(x.shape[0], -1).numpy()
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {x.shape[0]}")
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||μ1-μ2||² + tr(Σ1 + Σ2 - 2 (Σ1^½ Σ2 Σ1^½)^½).

    tr((Σ1Σ2)^½) is computed through the symmetric PSD matrix Σ1^½ Σ2 Σ1^½, which has the same
    eigenvalues as Σ1Σ2 and avoids the complex round-off of a general ``sqrtm``.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"shapes differ: {mu1.shape}/{s1.shape} vs {mu2.shape}/{s2.shape}")
    r1 = _sqrtm_psd(s1)
    covmean_trace = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * covmean_trace)


def frechet_distance_from_features(x: torch.Tensor, y: torch.Tensor) -> float:
    return frechet_distance(*gaussian_stats(x), *gaussian_stats(y))
