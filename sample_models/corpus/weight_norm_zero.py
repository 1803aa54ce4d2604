# Source: https://github.com/pytorch/pytorch/issues/19126
# Mechanism: weight_norm over a layer whose weight is all zeros (zero-initialised output projection): v / ||v|| is 0/0 inside the fused op.
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.inp = nn.Linear(d, d)
        proj = nn.Linear(d, d)
        nn.init.zeros_(proj.weight)          # "zero-init the residual branch" trick
        self.proj = nn.utils.parametrizations.weight_norm(proj)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = x + self.proj(torch.relu(self.inp(x)))  # nandoctor: origin
        return self.head(h)


def build_model():
    return Block()


def get_batch(step):
    return torch.randn(16, 16), torch.randint(0, 3, (16,))
