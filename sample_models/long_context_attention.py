"""Reformer-style shared query/key attention over embeddings scaled by sqrt(d)."""
import math

import torch
from torch import nn


class SharedQKEncoder(nn.Module):
    def __init__(self, vocab=500, d=512):
        super().__init__()
        self.d = d
        self.embed = nn.Embedding(vocab, d)
        self.query_key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.classify = nn.Linear(d, 2)

    def forward(self, tokens):
        h = self.embed(tokens) * math.sqrt(self.d)
        qk = self.query_key(h)
        scores = qk @ qk.transpose(1, 2)
        attended = torch.softmax(scores, dim=-1) @ self.value(h)
        return self.classify(self.norm(attended).mean(dim=1))


def build_model():
    return SharedQKEncoder()


def get_batch(step):
    return torch.randint(0, 500, (4, 32)), torch.randint(0, 2, (4,))


def build_optimizer(params):
    return torch.optim.AdamW(params, lr=1e-4)
