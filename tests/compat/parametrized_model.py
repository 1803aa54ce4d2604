"""A classifier whose layers carry torch.nn.utils.parametrizations (weight_norm, orthogonal);
the log of a shifted input goes NaN at step 2 (tests/test_compat.py)."""
import torch
from torch import nn
from torch.nn.utils import parametrizations


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = parametrizations.weight_norm(nn.Linear(4, 8))
        self.mix = parametrizations.orthogonal(nn.Linear(8, 8))
        self.out = nn.Linear(8, 1)

    def forward(self, x):
        return self.out(torch.log(self.mix(torch.tanh(self.inp(x))) + x[:, :1] + 3.0))


def build_model():
    torch.manual_seed(0)
    return Net()


def get_batch(step):
    x = torch.randn(8, 4)
    if step == 2:
        x[5, 0] = -50.0
    return x, torch.randn(8, 1)


def training_step(model, batch):
    x, y = batch
    return (model(x) - y).pow(2).mean()
