# Source: https://github.com/pyro-ppl/numpyro/issues/2088
# Mechanism: a Beta log-likelihood with relu concentrations: lgamma(0) = inf at a concentration of exactly 0, then inf - inf = NaN.
import torch
from torch import nn


class BetaRegressor(nn.Module):
    def __init__(self, d=6):
        super().__init__()
        self.net = nn.Linear(d, 2)

    def forward(self, x):
        conc = torch.relu(self.net(x))      # concentrations may be exactly 0
        return conc[:, 0], conc[:, 1]


def build_model():
    return BetaRegressor()


def get_batch(step):
    x = torch.randn(32, 6)
    y = torch.rand(32) * 0.9 + 0.05
    return x, y


def loss_fn(outputs, y):
    a, b = outputs
    log_norm = torch.lgamma(a + b) - torch.lgamma(a) - torch.lgamma(b)  # nandoctor: origin
    log_prob = log_norm + (a - 1) * torch.log(y) + (b - 1) * torch.log1p(-y)
    return -log_prob.mean()
