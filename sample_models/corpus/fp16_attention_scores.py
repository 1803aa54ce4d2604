# Source: https://github.com/pytorch/pytorch/issues/60939
# Mechanism: under float16 autocast the query-key product is computed in half precision; with large, unnormalised
# hidden states and the 1/sqrt(d) scale applied after the matmul, scores exceed 65504 and become inf, and softmax of
# a row holding inf is NaN. In float32 the same scores (~1e5, max |x| ~2e5) are finite.
import math

import torch
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, dim=64, heads=2):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        hd = d // self.heads
        q = self.q(x).view(b, n, self.heads, hd).transpose(1, 2)
        k = self.k(x).view(b, n, self.heads, hd).transpose(1, 2)
        v = self.v(x).view(b, n, self.heads, hd).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2))  # nandoctor: origin
        attn = torch.softmax(scores / math.sqrt(hd), dim=-1)
        return self.o(torch.matmul(attn, v).transpose(1, 2).reshape(b, n, d))


class Encoder(nn.Module):
    def __init__(self, dim=64, n_classes=4):
        super().__init__()
        self.attn = SelfAttention(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x):
        h = x + self.attn(x)                 # pre-norm forgotten: attention sees the raw residual stream
        return self.head(self.norm(h).mean(1))


def build_model():
    return Encoder()


def get_batch(step):
    return torch.randn(4, 12, 64) * 120.0, torch.randint(0, 4, (4,))
