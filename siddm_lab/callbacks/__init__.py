"""Lightning callbacks: EMA of the weights, per-step seeding (exact resume), checkpoints, speed options."""

from siddm_lab.callbacks.checkpoint import ExceptionCheckpoint, PeriodicCheckpoint
from siddm_lab.callbacks.ema import EMA
from siddm_lab.callbacks.seeding import StepSeed
from siddm_lab.callbacks.speed import NetSpeedups

__all__ = ["EMA", "ExceptionCheckpoint", "NetSpeedups", "PeriodicCheckpoint", "StepSeed"]
