# Source: https://github.com/Lightning-AI/torchmetrics/issues/3488
# Mechanism: log(cosh(residual)) evaluated directly; cosh overflows float32 for |residual| > ~89.
import torch
from torch import nn


def build_model():
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))


def get_batch(step):
    x = torch.randn(32, 4)
    y = x.sum(dim=1, keepdim=True)
    y[5] = 120.0              # one outlier label, the reason the user chose log-cosh
    return x, y


def loss_fn(pred, y):
    return torch.log(torch.cosh(pred - y)).mean()  # nandoctor: origin
