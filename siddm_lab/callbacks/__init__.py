"""Lightning callbacks: EMA of the weights, periodic evaluation, per-step seeding (exact resume), checkpoints,
speed options, the run's config in its checkpoints."""

from siddm_lab.callbacks.checkpoint import ExceptionCheckpoint, PeriodicCheckpoint
from siddm_lab.callbacks.ema import EMA
from siddm_lab.callbacks.evaluation import PeriodicEvaluation
from siddm_lab.callbacks.run_config import RunConfig
from siddm_lab.callbacks.seeding import StepSeed
from siddm_lab.callbacks.speed import NetSpeedups

__all__ = ["EMA", "ExceptionCheckpoint", "NetSpeedups", "PeriodicCheckpoint", "PeriodicEvaluation", "RunConfig",
           "StepSeed"]
