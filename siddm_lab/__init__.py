"""siddm_lab: DDPM, DDIM, SIDDM and DDGAN on PyTorch Lightning + Hydra."""

__version__ = "0.1.0"
