# Source: https://github.com/YunYang1994/TensorFlow2.0-Examples/issues/8
# Mechanism: a linear warm-up keeps raising the learning rate towards a peak that is too high; training is fine for ~50 steps, then diverges to inf/NaN.
import torch
from torch import nn

PEAK_LR, WARMUP = 0.5, 200


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 32)
        self.fc2 = nn.Linear(32, 1)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc2(h)  # nandoctor: origin


def build_model():
    return Regressor()


def get_batch(step):
    x = torch.randn(32, 10)
    return x, x[:, :3].sum(dim=1, keepdim=True)


def build_optimizer(params):
    return torch.optim.SGD(params, lr=PEAK_LR, momentum=0.9)


def build_scheduler(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / WARMUP))
