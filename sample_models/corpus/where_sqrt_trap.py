# Source: https://github.com/pytorch/pytorch/issues/187297
# Mechanism: torch.where(d > 0, sqrt(d), 0) hides the NaN of sqrt of negatives in the forward pass; the backward of the unselected sqrt branch still yields NaN.
import torch
from torch import nn


class SoftMarginDistance(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(8, 4)

    def forward(self, a, b):
        ea, eb = self.emb(a), self.emb(b)
        d = (ea - eb).pow(2).sum(-1) - 1.0           # squared distance minus margin: often negative
        return torch.where(d > 0, torch.sqrt(d), torch.zeros_like(d))  # nandoctor: origin


def build_model():
    return SoftMarginDistance()


def get_batch(step):
    return (torch.randn(32, 8), torch.randn(32, 8)), torch.rand(32)
