"""A model file for bundles the watch writes from a loop that runs its own torch.autocast
(tests/test_compat.py): a batch scaled by 3e4 overflows float16 in `a`, never float32."""
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 16)
        self.b = nn.Linear(16, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def build_model():
    torch.manual_seed(0)
    return Net()


def training_step(model, batch):
    x, y = batch
    return (model(x).squeeze(-1) - y).pow(2).mean()
