# Source: https://github.com/anthonymlortiz/lcn/issues/4
# Mechanism: a norm layer computes var = E[x^2] - E[x]^2; with bfloat16's 8-bit mantissa the two ~100-sized terms cancel to a negative number and sqrt gives NaN.
import torch
from torch import nn


class FastNorm(nn.Module):
    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = (x * x).mean(dim=-1, keepdim=True) - mean * mean
        return (x - mean) / torch.sqrt(var + 1e-5)  # nandoctor: origin


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = FastNorm()
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.norm(x))


def build_model():
    return Net()


def get_batch(step):
    x = 10.0 + 0.1 * torch.randn(16, 32)       # positive sensor readings around 10
    return x, torch.randint(0, 3, (16,))
