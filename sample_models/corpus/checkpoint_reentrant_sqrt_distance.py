# Source: https://github.com/pytorch/pytorch/issues/2421
# Mechanism: a point-set encoder block, wrapped in reentrant activation checkpointing, computes pairwise distances
# by hand as sqrt(sum((x_i - x_j) ** 2)). The diagonal (a point with itself) is exactly 0: the forward is finite,
# but sqrt's derivative at 0 is inf and the backward (re-run inside the checkpoint) makes 0 * inf = NaN gradients.
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class DistanceBlock(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.mix = nn.Linear(dim, dim)

    def forward(self, x):
        h = self.proj(x)
        diff = h.unsqueeze(2) - h.unsqueeze(1)
        dist = torch.sqrt((diff ** 2).sum(-1))  # nandoctor: origin
        weights = torch.softmax(-dist, dim=-1)
        return x + self.mix(weights @ h)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 16)
        self.block = DistanceBlock()
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = checkpoint(self.block, self.inp(x), use_reentrant=True)
        return self.head(h.mean(1))


def build_model():
    return Model()


def get_batch(step):
    return torch.randn(4, 6, 16), torch.randint(0, 3, (4,))
