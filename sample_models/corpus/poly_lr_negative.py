# Source: https://github.com/JIA-Lab-research/Context-Aware-Consistency/issues/10
# Mechanism: a "poly" schedule lr = base * (1 - it / N) whose N was computed from a smaller dataset than the one
# trained: from step 30 on the factor is negative, the SGD step climbs the loss, and the weights grow until
# the activations overflow to inf. Fails only after step 30.
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 64)
        self.fc2 = nn.Linear(64, 64)
        self.fc3 = nn.Linear(64, 1)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = torch.relu(self.fc2(h))
        return self.fc3(h)


def build_model():
    return MLP()


def get_batch(step):
    x = torch.randn(64, 20)
    return x, x[:, :1] * 2.0 - x[:, 1:2]


def loss_fn(pred, target):
    return torch.nn.functional.mse_loss(pred, target)  # nandoctor: origin


def build_optimizer(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def build_scheduler(optimizer):
    iters_planned = 30                        # N from the old dataset; the run is longer
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0 - it / iters_planned)
