# Source: https://github.com/rickgroen/cov-weighting/issues/3
# Mechanism: learned task-uncertainty weights exp(-s) * L + s; a task whose loss is exactly 0 drives s down by 1 per step until exp(-s) overflows (~step 90), then inf * 0 = NaN.
import torch
from torch import nn


class MultiTask(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(8, 16)
        self.heads = nn.Linear(16, 2)
        self.log_vars = nn.Parameter(torch.zeros(2))
        self.log_vars.uncertainty_weight = True

    def forward(self, x):
        return self.heads(torch.relu(self.trunk(x))), self.log_vars


def build_model():
    return MultiTask()


def get_batch(step):
    x = torch.randn(16, 8)
    y = torch.stack([x.sum(dim=1), torch.zeros(16)], dim=1)
    labelled = torch.stack([torch.ones(16), torch.zeros(16)], dim=1)   # task 2 has no labels in this dataset
    return x, (y, labelled)


def loss_fn(outputs, targets):
    pred, log_vars = outputs
    y, labelled = targets
    task_losses = ((pred - y) ** 2 * labelled).mean(dim=0)
    precision = torch.exp(-log_vars)  # nandoctor: origin
    return (precision * task_losses + log_vars).sum()


def build_optimizer(params):
    params = list(params)
    weights = [p for p in params if getattr(p, "uncertainty_weight", False)]
    others = [p for p in params if not getattr(p, "uncertainty_weight", False)]
    return torch.optim.SGD([{"params": others, "lr": 0.01}, {"params": weights, "lr": 1.0}])
