# Source: https://github.com/keras-team/keras/pull/18722
# Healthy: the same poly schedule as a negative-lr bug, written with a floor: lr = base * max(0, 1 - it / N)**0.9
# plus a minimum of 1e-4 of the base. Past N the lr stays small and positive; the run converges.
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 64)
        self.fc2 = nn.Linear(64, 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def build_model():
    return MLP()


def get_batch(step):
    x = torch.randn(64, 20)
    return x, x[:, :1] * 2.0 - x[:, 1:2]


def build_optimizer(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def build_scheduler(optimizer):
    iters_planned = 30
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: max(1e-4, max(0.0, 1.0 - it / iters_planned) ** 0.9))
