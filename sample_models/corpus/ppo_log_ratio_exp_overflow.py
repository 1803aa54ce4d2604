# Source: https://github.com/radixark/miles/pull/1363
# Mechanism: the PPO importance ratio is exp(logp_new - logp_old) with logp_old read from the rollout engine. A few
# response tokens were sampled by the engine at a near-zero probability (logp_old ~ -120), so the log-ratio is ~115,
# exp overflows float32 to inf, and the unclipped branch multiplies inf by those tokens' zero advantage -> NaN.
import torch
from torch import nn
import torch.nn.functional as F


class Policy(nn.Module):
    def __init__(self, vocab=30, dim=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.body = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, vocab))

    def forward(self, tokens):
        return self.body(self.emb(tokens))


def build_model():
    return Policy()


def get_batch(step):
    tokens = torch.randint(0, 30, (4, 10))
    actions = torch.randint(0, 30, (4, 10))
    old_logp = torch.full((4, 10), -3.4)
    old_logp[2, 7:] = -120.0                    # tokens the engine sampled at ~e^-120 probability
    advantages = torch.randn(4, 10)
    advantages[2, 7:] = 0.0                     # past the reward position: no advantage
    return tokens, (actions, old_logp, advantages)


def loss_fn(logits, targets):
    actions, old_logp, advantages = targets
    logp = F.log_softmax(logits, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    ratio = torch.exp(logp - old_logp)  # nandoctor: origin
    unclipped = ratio * advantages
    clipped = ratio.clamp(0.8, 1.2) * advantages
    return -torch.min(unclipped, clipped).mean()
