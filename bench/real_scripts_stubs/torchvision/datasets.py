"""MNIST and FakeData over tensors that bench/real_scripts.py generated (no download)."""
from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset



def _transformed(dataset, image, target):
    """An item through the dataset's `transform` and `target_transform`, as torchvision applies them."""
    if dataset.transform is not None:
        image = dataset.transform(image)
    if dataset.target_transform is not None:
        target = dataset.target_transform(target)
    return image, target

class MNIST(Dataset):
    """Reads `<root>/MNIST/tiny/train.pt` or `test.pt`: {"images": float [N, 28, 28] in [0, 1],
    "labels": int64 [N]}. `download` is accepted and ignored."""

    def __init__(self, root, train=True, download=False, transform=None, target_transform=None):
        path = os.path.join(root, "MNIST", "tiny", "train.pt" if train else "test.pt")
        if not os.path.exists(path):
            raise RuntimeError(f"Dataset not found at {path} (the stub never downloads)")
        blob = torch.load(path, weights_only=True)
        self.data, self.targets = blob["images"], blob["labels"]
        self.transform, self.target_transform = transform, target_transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        image, target = self.data[index].unsqueeze(0).clone(), int(self.targets[index])
        return _transformed(self, image, target)


class FakeData(Dataset):
    """Random images from a per-index generator, as torchvision's FakeData draws them."""

    def __init__(self, size=1000, image_size=(3, 224, 224), num_classes=10, transform=None,
                 target_transform=None, random_offset=0):
        self.size, self.image_size, self.num_classes = size, tuple(image_size), num_classes
        self.transform, self.target_transform, self.random_offset = transform, target_transform, random_offset

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index + self.random_offset)
        image = torch.rand(self.image_size, generator=generator)
        target = int(torch.randint(0, self.num_classes, (1,), generator=generator))
        return _transformed(self, image, target)


class CIFAR10(Dataset):
    """Reads `<root>/cifar10/tiny.pt` ({"images": float [N, 3, 32, 32] in [0, 1], "labels": int64 [N]})
    written by bench/real_scripts_data.py; `download` is accepted and ignored. Items are tensors
    where torchvision gives PIL images (the stub's transforms take tensors)."""

    def __init__(self, root, train=True, transform=None, target_transform=None, download=False):
        path = os.path.join(root, "cifar10", "tiny.pt" if train else "tiny_test.pt")
        if not os.path.exists(path):
            raise RuntimeError(f"Dataset not found at {path} (the stub never downloads)")
        blob = torch.load(path, weights_only=True)
        self.data, self.targets = blob["images"], blob["labels"]
        self.transform, self.target_transform = transform, target_transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        image, target = self.data[index].clone(), int(self.targets[index])
        return _transformed(self, image, target)
