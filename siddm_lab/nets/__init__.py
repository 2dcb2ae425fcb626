"""Networks: time-conditioned MLP for 2-D data and a DDPM-style UNet for images."""

from siddm_lab.nets.discriminator import ConvDiscriminator, DiscriminatorOutput, TimeDiscriminator
from siddm_lab.nets.mlp import TimeMLP
from siddm_lab.nets.unet import UNet

__all__ = ["ConvDiscriminator", "DiscriminatorOutput", "TimeDiscriminator", "TimeMLP", "UNet"]
