# Source: https://github.com/ZijieH/CG-ODE/issues/1
# Mechanism: a probabilistic regressor predicts the standard deviation with a plain Linear layer (no softplus/exp);
# torch.distributions.Normal validates its arguments and raises ValueError as soon as one predicted scale is <= 0.
import torch
from torch import nn
from torch.distributions import Normal


class GaussianRegressor(nn.Module):
    def __init__(self, n_in=12, hidden=32):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh())
        self.mu = nn.Linear(hidden, 1)
        self.sigma = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.body(x)
        return self.mu(h), self.sigma(h)


def build_model():
    return GaussianRegressor()


def get_batch(step):
    x = torch.randn(64, 12)
    return x, x[:, :1] * 0.5 + 0.1 * torch.randn(64, 1)


def loss_fn(outputs, y):
    mu, sigma = outputs
    dist = Normal(mu, sigma)  # nandoctor: origin
    return -dist.log_prob(y).mean()
