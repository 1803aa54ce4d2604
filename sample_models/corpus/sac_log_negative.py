# Source: https://github.com/philtabor/Actor-Critic-Methods-Paper-To-Code/issues/7
# Mechanism: the tanh-squash correction log(1 - a^2) uses the action after scaling by max_action = 2, so 1 - a^2 < 0 and log gives NaN.
import torch
from torch import nn

MAX_ACTION = 2.0


class Actor(nn.Module):
    def __init__(self, obs=6, act=2):
        super().__init__()
        self.mu = nn.Linear(obs, act)
        self.log_std = nn.Linear(obs, act)

    def forward(self, obs):
        mu, log_std = self.mu(obs), self.log_std(obs).clamp(-5, 2)
        dist = torch.distributions.Normal(mu, log_std.exp())
        raw = dist.rsample()
        action = torch.tanh(raw) * MAX_ACTION
        log_prob = dist.log_prob(raw)
        log_prob = log_prob - torch.log(1 - action.pow(2) + 1e-6)  # nandoctor: origin
        return action, log_prob.sum(-1)


def build_model():
    return Actor()


def get_batch(step):
    return torch.randn(32, 6), torch.randn(32)


def loss_fn(outputs, q_values):
    action, log_prob = outputs
    return (0.2 * log_prob - q_values - action.sum(-1)).mean()
