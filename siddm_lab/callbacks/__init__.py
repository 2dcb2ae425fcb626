"""Lightning callbacks: EMA of the weights, per-step seeding (exact resume), checkpoints."""

from siddm_lab.callbacks.checkpoint import ExceptionCheckpoint, PeriodicCheckpoint
from siddm_lab.callbacks.ema import EMA
from siddm_lab.callbacks.seeding import StepSeed

__all__ = ["EMA", "ExceptionCheckpoint", "PeriodicCheckpoint", "StepSeed"]
