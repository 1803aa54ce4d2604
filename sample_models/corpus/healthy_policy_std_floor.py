# Source: https://github.com/ShangtongZhang/DeepRL/pull/5
# Healthy: the same behaviour-cloning setup as a collapsing Gaussian policy (expert actions at the bound, a tanh
# mean that saturates), but the std is softplus(raw) + 1e-3: it can shrink only to the floor, so the
# log-density stays finite however long the run.
import torch
from torch import nn
import torch.nn.functional as F


class GaussianPolicy(nn.Module):
    def __init__(self):
        super().__init__()
        self.mean = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 2))
        self.raw_std = nn.Parameter(torch.zeros(2))
        with torch.no_grad():
            self.mean[2].bias.fill_(12.0)

    def forward(self, obs):
        return torch.tanh(self.mean(obs)), F.softplus(self.raw_std) + 1e-3


def build_model():
    return GaussianPolicy()


def get_batch(step):
    return torch.randn(64, 6), torch.ones(64, 2)


def loss_fn(outputs, actions):
    mu, std = outputs
    nll = (actions - mu) ** 2 / (2 * std ** 2) + torch.log(std)
    return nll.sum(-1).mean()


def build_optimizer(params):
    return torch.optim.Adam(params, lr=0.05)
