# Source: https://github.com/pytorch/pytorch/issues/108618
# Mechanism: torch.where(h > 0, log(h), 0) is finite in the forward pass, but log's gradient at the unselected h = 0 is 0/0 = NaN.
import torch
from torch import nn


class LogCountFeatures(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(d))
        self.out = nn.Linear(d, 1)

    def forward(self, counts):
        h = counts * torch.exp(self.log_scale)
        h = torch.where(h > 0, torch.log(h), torch.zeros_like(h))  # nandoctor: origin
        return self.out(h)


def build_model():
    return LogCountFeatures()


def get_batch(step):
    counts = torch.poisson(torch.full((32, 8), 1.5))      # many zero counts
    return counts, counts.sum(dim=1, keepdim=True) * 0.1
