"""Tensor-only transforms: the stub datasets already hold float tensors in [0, 1] ([C, H, W]).

The random augmentations (crops, flips, colour jitter, grayscale) draw from torch's global
generator and do simple tensor arithmetic of the same kind as torchvision's; they keep values
in [0, 1] as the real ones do on images."""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for transform in self.transforms:
            x = transform(x)
        return x


class ToTensor:
    def __call__(self, x):
        return x if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float32)


class Normalize:
    def __init__(self, mean, std, inplace=False):
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)

    def __call__(self, x):
        return (x - self.mean.view(-1, 1, 1)) / self.std.view(-1, 1, 1)


class Lambda:
    def __init__(self, lambd):
        self.lambd = lambd

    def __call__(self, x):
        return self.lambd(x)


class _Passthrough:
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, x):
        return x


class RandomResizedCrop:
    """A random crop of 30-100% of the area, resized back to `size` (bilinear)."""

    def __init__(self, size, scale=(0.3, 1.0), **kwargs):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale = scale

    def __call__(self, x):
        height, width = x.shape[-2:]
        area = random.uniform(*self.scale)
        h = max(1, min(height, round(height * area ** 0.5)))
        w = max(1, min(width, round(width * area ** 0.5)))
        top, left = random.randint(0, height - h), random.randint(0, width - w)
        crop = x[..., top:top + h, left:left + w]
        return F.interpolate(crop.unsqueeze(0), size=self.size, mode="bilinear", align_corners=False).squeeze(0)


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, x):
        return x.flip(-1) if random.random() < self.p else x


class ColorJitter:
    """Brightness, contrast and saturation factors drawn in [1 - s, 1 + s]; hue is left alone."""

    def __init__(self, brightness=0, contrast=0, saturation=0, hue=0):
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, x):
        factor = lambda s: random.uniform(max(0.0, 1 - s), 1 + s)
        x = x * factor(self.brightness)
        x = (x - x.mean()) * factor(self.contrast) + x.mean()
        gray = x.mean(dim=0, keepdim=True)
        x = (x - gray) * factor(self.saturation) + gray
        return x.clamp(0, 1)


class RandomGrayscale:
    def __init__(self, p=0.1):
        self.p = p

    def __call__(self, x):
        return x.mean(dim=0, keepdim=True).expand_as(x).clone() if random.random() < self.p else x


class RandomApply:
    def __init__(self, transforms, p=0.5):
        self.transforms, self.p = list(transforms), p

    def __call__(self, x):
        if random.random() < self.p:
            for transform in self.transforms:
                x = transform(x)
        return x


ToPILImage = Resize = CenterCrop = RandomCrop = Grayscale = _Passthrough

# `from torchvision.transforms import transforms` (an alias module in torchvision)
from . import transforms  # noqa: E402,F401
