"""Tensor-only transforms: the stub datasets already hold float tensors in [0, 1]."""
from __future__ import annotations

import torch


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


class _Passthrough:
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, x):
        return x


Resize = CenterCrop = RandomCrop = RandomHorizontalFlip = Grayscale = _Passthrough
