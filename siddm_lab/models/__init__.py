"""LightningModules: DDPM/DDIM, SIDDM/DDGAN, distilled students (and the shared base)."""

from siddm_lab.models.base import DiffusionModule
from siddm_lab.models.ddpm import DDIM, DDPM
from siddm_lab.models.distill import KnowledgeDistillation, ProgressiveDistillation
from siddm_lab.models.siddm import SIDDM

__all__ = ["DDIM", "DDPM", "SIDDM", "DiffusionModule", "KnowledgeDistillation", "ProgressiveDistillation"]
