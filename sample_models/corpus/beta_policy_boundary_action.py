# Source: https://github.com/pytorch/pytorch/issues/92260
# Mechanism: a Beta policy (actions in [0, 1]) trained by behaviour cloning on logged actions that the
# environment clipped to exactly 0.0 and 1.0. Beta.log_prob at the boundary is xlogy(alpha - 1, 0) = -inf for
# alpha > 1 (softplus + 1 keeps alpha > 1), so the loss is +inf and its gradient NaN at the first step.
import torch
from torch import nn
import torch.nn.functional as F
from torch.distributions import Beta


class BetaPolicy(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 4))

    def forward(self, obs):
        alpha_beta = F.softplus(self.body(obs)) + 1.0
        return alpha_beta[:, :2], alpha_beta[:, 2:]


def build_model():
    return BetaPolicy()


def get_batch(step):
    obs = torch.randn(64, 8)
    actions = (torch.rand(64, 2) * 1.4 - 0.2).clamp(0.0, 1.0)   # the env clips its actions into [0, 1]
    return obs, actions


def loss_fn(outputs, actions):
    alpha, beta = outputs
    log_prob = Beta(alpha, beta).log_prob(actions).sum(-1)  # nandoctor: origin
    return -log_prob.mean()
