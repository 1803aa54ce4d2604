# Source: https://github.com/allenai/OLMo/pull/702
# Healthy: transformer-style blocks wrapped in non-reentrant activation checkpointing, with dropout inside. The
# recomputation in backward replays the saved RNG state (preserve_rng_state=True), so the dropout masks match the
# forward's and the gradients are those of the loss; nothing non-finite.
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class Block(nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(0.2), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return x + self.drop(self.ff(self.norm(x)))


class Model(nn.Module):
    def __init__(self, dim=32, depth=3):
        super().__init__()
        self.inp = nn.Linear(16, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = checkpoint(block, h, use_reentrant=False, preserve_rng_state=True)
        return self.head(h.mean(1))


def build_model():
    return Model()


def get_batch(step):
    return torch.randn(4, 6, 16), torch.randint(0, 5, (4,))
