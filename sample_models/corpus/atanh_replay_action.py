# Source: https://github.com/denisyarats/pytorch_sac/issues/7
# Mechanism: SAC recovers the pre-tanh action with atanh(a) for replayed actions; actions stored clipped to exactly +-1 give atanh(1) = inf.
import torch
from torch import nn


class Actor(nn.Module):
    def __init__(self, obs=6, act=2):
        super().__init__()
        self.mu = nn.Linear(obs, act)
        self.log_std = nn.Parameter(torch.zeros(act))

    def forward(self, obs, actions):
        dist = torch.distributions.Normal(self.mu(obs), self.log_std.exp())
        pre_tanh = torch.atanh(actions)  # nandoctor: origin
        log_prob = dist.log_prob(pre_tanh) - torch.log(1 - actions.pow(2) + 1e-6)
        return log_prob.sum(-1)


def build_model():
    return Actor()


def get_batch(step):
    obs = torch.randn(32, 6)
    actions = torch.tanh(torch.randn(32, 2) * 2)
    actions[::4] = actions[::4].sign()      # the environment wrapper clipped these actions to the bounds
    advantages = torch.randn(32)
    return (obs, actions), advantages


def loss_fn(log_prob, advantages):
    return -(log_prob * advantages).mean()
