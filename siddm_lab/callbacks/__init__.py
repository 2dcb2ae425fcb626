"""Lightning callbacks: EMA, non-finite-loss guard glue."""

from siddm_lab.callbacks.ema import EMA

__all__ = ["EMA"]
