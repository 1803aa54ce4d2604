"""Cosine-similarity retrieval head over zero-padded feature vectors, trained in pure half precision."""
import torch
from torch import nn


class CosineHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(24, 16)
        self.prototypes = nn.Parameter(torch.randn(6, 16))

    def forward(self, x):
        z = self.proj(x)
        z = z / (z.norm(dim=-1, keepdim=True) + 1e-8)
        p = self.prototypes / (self.prototypes.norm(dim=-1, keepdim=True) + 1e-8)
        return z @ p.t() * 10


def build_model():
    model = CosineHead()
    nn.init.zeros_(model.proj.bias)
    return model


def get_batch(step):
    x = torch.randn(16, 24)
    x[::4] = 0.0              # padding rows
    return x, torch.randint(0, 6, (16,))


def build_optimizer(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)
