# Source: https://github.com/lucidrains/reformer-pytorch/pull/26
# Healthy: attention whose padding mask is filled with torch.finfo(dtype).min instead of -inf. A sample whose
# keys are all padding gets a uniform softmax (finite) rather than 0/0, and its output is ignored by the loss.
import torch
from torch import nn
import torch.nn.functional as F


class MaskedAttentionPool(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.q = nn.Parameter(torch.randn(d) * 0.1)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, 3)

    def forward(self, x, pad):
        scores = self.k(x) @ self.q / x.shape[-1] ** 0.5
        scores = scores.masked_fill(pad, torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1)
        return self.out((weights.unsqueeze(-1) * self.v(x)).sum(1))


def build_model():
    return MaskedAttentionPool()


def get_batch(step):
    x = torch.randn(8, 10, 32)
    pad = torch.zeros(8, 10, dtype=torch.bool)
    pad[:, 7:] = True
    pad[5] = True                              # an empty document: every position is padding
    return (x, pad), torch.randint(0, 3, (8,))
