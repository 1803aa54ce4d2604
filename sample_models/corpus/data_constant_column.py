# Source: https://github.com/lukasruff/Deep-SVDD-PyTorch/issues/10
# Mechanism: per-batch feature standardisation in the data pipeline; a column that is constant in the batch has std 0 and (x - mean) / std = 0/0 = NaN.
import torch
from torch import nn


def build_model():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def get_batch(step):
    x = torch.randn(32, 6)
    x[:, 5] = (torch.rand(32) < 0.2).float()      # a one-hot category column
    if step == 2:
        x[:, 5] = 0.0                               # absent from this batch: a constant column
    x = (x - x.mean(dim=0)) / x.std(dim=0)  # nandoctor: origin
    return x, torch.randint(0, 2, (32,))
