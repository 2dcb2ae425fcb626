"""Pure diffusion math (no Lightning): schedules, forward/posterior, parameterisations, samplers,
training objectives."""

from siddm_lab.diffusion.continuous import CosineContinuousTime
from siddm_lab.diffusion.fixed_point import DEQSampler, PicardSampler, anderson
from siddm_lab.diffusion.gamma import GammaDiffusion
from siddm_lab.diffusion.gaussian import PREDICTION_TYPES, VARIANCE_TYPES, GaussianDiffusion, extract
from siddm_lab.diffusion.inversion import Inversion, decode_backprop, ift_gradient
from siddm_lab.diffusion.losses import (
    OBJECTIVES,
    DDGANLoss,
    DDPMLoss,
    GANObjective,
    GANParts,
    SIDDMLoss,
    SIDDMReleasedLoss,
)
from siddm_lab.diffusion.rng import RandomSource
from siddm_lab.diffusion.samplers import (
    REQUIREMENTS,
    SAMPLERS,
    AncestralSampler,
    DDIMSampler,
    Denoiser,
    GammaDDIMSampler,
    GeneratorChain,
    OwnPlan,
    Sampler,
    StepSampler,
    build_sampler,
    check_sampler,
    ddim_invert,
    full_timesteps,
    prepare_sampler,
    sample_generator_chain,
    sample_loop,
    slerp,
    uniform_timesteps,
)
from siddm_lab.diffusion.schedules import SCHEDULES, make_betas, rescale_zero_terminal_snr
from siddm_lab.diffusion.solvers import DEISSampler, DiffusersSolver, DPMSolverSampler, HeunSampler, UniPCSampler
from siddm_lab.diffusion.subsequences import SUBSEQUENCES, make_timesteps

__all__ = [
    "OBJECTIVES",
    "PREDICTION_TYPES",
    "SCHEDULES",
    "VARIANCE_TYPES",
    "SAMPLERS",
    "SUBSEQUENCES",
    "REQUIREMENTS",
    "build_sampler",
    "check_sampler",
    "prepare_sampler",
    "Denoiser",
    "OwnPlan",
    "Sampler",
    "AncestralSampler",
    "CosineContinuousTime",
    "DDGANLoss",
    "DDIMSampler",
    "GammaDDIMSampler",
    "GammaDiffusion",
    "DEQSampler",
    "DEISSampler",
    "DiffusersSolver",
    "DPMSolverSampler",
    "HeunSampler",
    "UniPCSampler",
    "PicardSampler",
    "anderson",
    "Inversion",
    "decode_backprop",
    "ift_gradient",
    "GeneratorChain",
    "StepSampler",
    "DDPMLoss",
    "GANObjective",
    "GANParts",
    "RandomSource",
    "SIDDMLoss",
    "SIDDMReleasedLoss",
    "ddim_invert",
    "make_timesteps",
    "slerp",
    "GaussianDiffusion",
    "extract",
    "full_timesteps",
    "make_betas",
    "rescale_zero_terminal_snr",
    "sample_generator_chain",
    "sample_loop",
    "uniform_timesteps",
]
