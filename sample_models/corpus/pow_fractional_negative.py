# Source: https://github.com/pytorch/pytorch/issues/75405
# Mechanism: gamma correction x ** (1/2.2) on an unbounded network output; a negative base to a fractional power is NaN.
import torch
from torch import nn


class ToneMapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, rgb_linear):
        out = self.net(rgb_linear)               # may be slightly negative
        return out ** (1 / 2.2)  # nandoctor: origin


def build_model():
    return ToneMapper()


def get_batch(step):
    x = torch.rand(64, 3)
    return x, x ** (1 / 2.2)
