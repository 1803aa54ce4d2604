# Source: https://github.com/pytorch/pytorch/issues/2421
# Healthy: a length penalty on per-token vectors with .norm(dim=-1), where padded tokens are exactly zero vectors.
# The 2-norm's gradient at 0 is the subgradient 0 in torch (fixed since the report), so no NaN appears.
import torch
from torch import nn
import torch.nn.functional as F


class TokenEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 16, bias=False)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        h = self.proj(x)                     # zero inputs give exactly zero vectors (no bias)
        return self.head(h.mean(1)), h.norm(dim=-1)


def build_model():
    return TokenEncoder()


def get_batch(step):
    x = torch.randn(8, 12, 16)
    x[:, 8:] = 0.0
    return x, torch.randint(0, 2, (8,))


def loss_fn(outputs, labels):
    logits, lengths = outputs
    return F.cross_entropy(logits, labels) + 1e-3 * lengths.mean()
