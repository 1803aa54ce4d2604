# Source: https://github.com/pytorch/torchtitan/pull/1010
# Mechanism: an inverse-sqrt schedule precomputed with numpy divides by sqrt(step) from step 0: the multiplier at step 0 is inf and so is the learning rate.
import numpy as np
import torch
from torch import nn

WARMUP, TOTAL = 10, 1000


def build_model():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


def get_batch(step):
    x = torch.randn(16, 8)
    return x, x.sum(dim=1, keepdim=True)


def build_optimizer(params):
    return torch.optim.Adam(params, lr=1e-3)


def build_scheduler(optimizer):
    with np.errstate(divide="ignore"):
        factors = np.sqrt(WARMUP) / np.sqrt(np.arange(TOTAL))  # nandoctor: origin
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: float(factors[step]))
