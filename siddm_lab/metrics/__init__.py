"""Metrics: toy 2-D metrics and Fréchet distances."""

from siddm_lab.metrics.frechet import frechet_distance, frechet_distance_from_features, gaussian_stats
from siddm_lab.metrics.toy import frechet_distance_2d, mmd, mode_metrics

__all__ = [
    "frechet_distance",
    "frechet_distance_2d",
    "frechet_distance_from_features",
    "gaussian_stats",
    "mmd",
    "mode_metrics",
]
