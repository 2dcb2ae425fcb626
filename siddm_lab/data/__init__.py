"""Data: toy 2-D distributions, image readers and LightningDataModules."""

from siddm_lab.data.datamodules import ImageDataModule, ToyDataModule
from siddm_lab.data.images import read_cifar10, read_digits, read_image_folder, read_mnist
from siddm_lab.data.toy import GaussianGrid, GaussianRing, SwissRoll

__all__ = [
    "GaussianGrid",
    "GaussianRing",
    "ImageDataModule",
    "SwissRoll",
    "ToyDataModule",
    "read_cifar10",
    "read_digits",
    "read_image_folder",
    "read_mnist",
]
