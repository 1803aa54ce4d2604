# Source: https://github.com/leggedrobotics/rsl_rl/pull/190
# Mechanism: behaviour cloning of a Gaussian policy with a free log_std parameter. The expert's actions sit at
# the action bound +1 and the policy mean is tanh(...), which saturates to exactly 1.0 in float32: the residual is
# exactly 0, so the Gaussian NLL lowers log_std at every step, unbounded. When std**2 underflows to 0
# (log_std < -52), the hand-written log-density divides 0 by 0: NaN, after step 30.
import torch
from torch import nn


class GaussianPolicy(nn.Module):
    def __init__(self):
        super().__init__()
        self.mean = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 2))
        self.log_std = nn.Parameter(torch.zeros(2))
        with torch.no_grad():
            self.mean[2].bias.fill_(12.0)      # mean head starts saturated towards the +1 bound

    def forward(self, obs):
        return torch.tanh(self.mean(obs)), self.log_std


def build_model():
    return GaussianPolicy()


def get_batch(step):
    return torch.randn(64, 6), torch.ones(64, 2)     # expert actions clipped to the bound


def loss_fn(outputs, actions):
    mu, log_std = outputs
    var = torch.exp(2 * log_std)
    nll = (actions - mu) ** 2 / (2 * var) + log_std  # nandoctor: origin
    return nll.sum(-1).mean()


def build_optimizer(params):
    return torch.optim.Adam(params, lr=1.5)
