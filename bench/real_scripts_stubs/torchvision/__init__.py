"""A stand-in for torchvision: tiny generated datasets, tensor transforms, no network."""
from . import datasets, models, ops, transforms, utils  # noqa: F401

__version__ = "0.0+nandoctor-stub"
