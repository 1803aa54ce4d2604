"""torchvision.transforms.transforms: the same classes (scripts import either path)."""
from . import (ColorJitter, Compose, Lambda, Normalize, RandomApply, RandomGrayscale,  # noqa: F401
               RandomHorizontalFlip, RandomResizedCrop, ToPILImage, ToTensor)
