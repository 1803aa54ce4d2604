# Source: https://github.com/NVIDIA/apex/issues/1052
# Mechanism: attention scores are masked with masked_fill(mask, -1e9). Under float16 autocast the scores are float16
# and -1e9 does not fit in float16, so masked_fill raises "value cannot be converted to type at::Half without
# overflow" in the first forward. float32 runs fine.
import math

import torch
from torch import nn


class PathAttention(nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)

    def forward(self, x, keep):
        scores = self.q(x) @ self.k(x).transpose(-1, -2) / math.sqrt(x.shape[-1])
        scores = scores.masked_fill(~keep[:, None, :], -1e9)  # nandoctor: origin
        return torch.softmax(scores, dim=-1) @ self.v(x)


class Model(nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        self.attn = PathAttention(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x, keep):
        return self.head(self.attn(x, keep).mean(1))


def build_model():
    return Model()


def get_batch(step):
    keep = torch.ones(4, 10, dtype=torch.bool)
    keep[:, 8:] = False
    return (torch.randn(4, 10, 32), keep), torch.randint(0, 3, (4,))
