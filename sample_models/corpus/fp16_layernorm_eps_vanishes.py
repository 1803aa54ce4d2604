# Source: https://github.com/deepspeedai/DeepSpeed/issues/581
# Mechanism: a hand-written LayerNorm with eps = 1e-12, run with float16 weights and activations: 1e-12 is 0 in
# float16 (smallest subnormal ~6e-8), so for the constant (zero-padded) positions var + eps == 0 and rsqrt gives
# inf; inf * 0 = NaN. In float32 the eps keeps the same rows finite.
import torch
from torch import nn


class HandLayerNorm(nn.Module):
    def __init__(self, d, eps=1e-12):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.eps = eps

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) * torch.rsqrt(var + self.eps) * self.weight + self.bias  # nandoctor: origin


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32, padding_idx=0)
        self.norm = HandLayerNorm(32)
        self.head = nn.Linear(32, 5)

    def forward(self, tokens):
        return self.head(self.norm(self.emb(tokens))).mean(1)


def build_model():
    return Encoder()


def get_batch(step):
    tokens = torch.randint(1, 50, (8, 12))
    tokens[:, 9:] = 0                      # right padding: zero embeddings, variance exactly 0
    return tokens, torch.randint(0, 5, (8,))
