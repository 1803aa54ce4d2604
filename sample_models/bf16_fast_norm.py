"""A sensor model with a hand-written "fast" normalisation layer.

The layer computes the variance in one pass as E[x²] - E[x]². The readings sit around 20 with
a spread of 0.3, so both terms are ~400 and their difference is ~0.09. float32 keeps enough
digits for that; bfloat16 (8-bit mantissa, steps of 2 near 400) does not, and the difference
can come out negative: sqrt gives NaN in bf16-true only.
"""
import torch
from torch import nn


class FastNorm(nn.Module):
    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = (x * x).mean(dim=-1, keepdim=True) - mean * mean
        return (x - mean) / torch.sqrt(var + 1e-5)


class SensorNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = FastNorm()
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        return self.head(self.norm(x))


def build_model():
    return SensorNet()


def get_batch(step):
    x = 20.0 + 0.3 * torch.randn(16, 24)
    return x, torch.randint(0, 4, (16,))
