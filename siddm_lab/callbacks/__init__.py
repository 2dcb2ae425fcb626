"""Lightning callbacks: EMA of the weights."""

from siddm_lab.callbacks.ema import EMA

__all__ = ["EMA"]
