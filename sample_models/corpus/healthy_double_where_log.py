# Source: https://github.com/pytorch/pytorch/issues/68425
# Healthy: the double-where idiom: log is applied to where(h > 0, h, 1), so neither the value nor the gradient of the unselected branch is infinite.
import torch
from torch import nn


class LogCountFeatures(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(d))
        self.out = nn.Linear(d, 1)

    def forward(self, counts):
        h = counts * torch.exp(self.log_scale)
        positive = h > 0
        safe = torch.where(positive, h, torch.ones_like(h))
        return self.out(torch.where(positive, torch.log(safe), torch.zeros_like(h)))


def build_model():
    return LogCountFeatures()


def get_batch(step):
    counts = torch.poisson(torch.full((32, 8), 1.5))
    return counts, counts.sum(dim=1, keepdim=True) * 0.1
