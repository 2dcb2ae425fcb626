"""Networks: time-conditioned MLPs for 2-D data (and the released SIDDM toy nets), a DDPM-style UNet
for images, DDGAN's NCSN++ generator and discriminators, other discriminators, and ensembles of small nets."""

from siddm_lab.nets.ddgan_discriminator import DDGANDiscriminator, DDGANDiscriminatorLarge, DDGANDiscriminatorSmall
from siddm_lab.nets.discriminator import ConvDiscriminator, DiscriminatorOutput, TimeDiscriminator
from siddm_lab.nets.ensemble import EnsembleLinear, extract_member, stack_members
from siddm_lab.nets.mlp import TimeMLP
from siddm_lab.nets.ncsnpp import NCSNpp, from_ddgan_state_dict, to_ddgan_state_dict
from siddm_lab.nets.toy_gan import MLPDiscriminator, SkipMLPGenerator
from siddm_lab.nets.unet import UNet

__all__ = ["ConvDiscriminator", "DDGANDiscriminator", "DDGANDiscriminatorLarge", "DDGANDiscriminatorSmall",
           "DiscriminatorOutput", "EnsembleLinear", "MLPDiscriminator", "NCSNpp", "SkipMLPGenerator",
           "TimeDiscriminator", "TimeMLP", "UNet", "extract_member", "from_ddgan_state_dict", "stack_members",
           "to_ddgan_state_dict"]
