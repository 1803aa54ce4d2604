# Source: https://github.com/lucidrains/nGPT-pytorch/issues/11
# Mechanism: the padding mask (True = padding) is passed where the attention code expects True = keep, and the
# eager attention fills the *kept* keys with -inf. A sequence without padding then has every key masked: its
# score rows are all -inf and softmax over them is 0 / 0 = NaN from the first forward, in every precision.
import math

import torch
from torch import nn


class MaskedSelfAttention(nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, keep):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~keep[:, None, :], float("-inf"))
        attn = torch.softmax(scores, dim=-1)  # nandoctor: origin
        return self.out(attn @ v)


class Classifier(nn.Module):
    def __init__(self, vocab=50, dim=32, n_classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.attn = MaskedSelfAttention(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, tokens):
        padding = tokens == 0
        h = self.attn(self.emb(tokens), keep=padding)   # bug: the padding mask where the keep mask belongs
        return self.head(h.mean(1))


def build_model():
    return Classifier()


def get_batch(step):
    tokens = torch.randint(1, 50, (4, 10))
    tokens[1:, 7:] = 0                       # rows 1..3 padded; row 0 is full length
    return tokens, torch.randint(0, 3, (4,))
