# Source: https://github.com/digantamisra98/EvoNorm/issues/4
# Mechanism: a hand-written instance norm uses rsqrt(var) without eps; a constant (zero-variance) feature map gives rsqrt(0) = inf.
import torch
from torch import nn


class InstanceStd(nn.Module):
    def forward(self, x):
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)
        return (x - mean) * torch.rsqrt(var)  # nandoctor: origin


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = InstanceStd()
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = self.norm(torch.relu(self.conv(x)))
        return self.head(h.mean(dim=(2, 3)))


def build_model():
    return Net()


def get_batch(step):
    x = torch.randn(6, 3, 8, 8)
    x[4] = 0.0               # a blank (all-black) frame from a corrupted video
    return x, torch.randint(0, 5, (6,))
