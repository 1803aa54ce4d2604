# Source: https://github.com/Lightning-AI/torchmetrics/issues/1029
# Mechanism: an entropy/KL term p * log2(p) over probabilities with exact zeros: log2(0) = -inf, 0 * -inf = NaN.
import torch
from torch import nn


class Router(nn.Module):
    """Mixture-of-experts router with a load-balancing entropy bonus."""

    def __init__(self, d=16, experts=6):
        super().__init__()
        self.gate = nn.Linear(d, experts)
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        scores = torch.relu(self.gate(x))
        probs = scores / (scores.sum(dim=-1, keepdim=True) + 1e-6)   # relu makes some routing probabilities exactly 0
        entropy = -(probs * torch.log2(probs)).sum(dim=-1).mean()  # nandoctor: origin
        return self.head(x), entropy


def build_model():
    return Router()


def get_batch(step):
    return torch.randn(32, 16), torch.randint(0, 4, (32,))


def loss_fn(outputs, targets):
    logits, entropy = outputs
    return nn.functional.cross_entropy(logits, targets) - 0.01 * entropy
