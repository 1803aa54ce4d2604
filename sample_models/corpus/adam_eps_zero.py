# Source: https://github.com/chainer/chainer/pull/3753
# Mechanism: Adam with eps=0; embedding rows that no batch has used have m = v = 0, so the update m / (sqrt(v) + 0) is 0/0 = NaN.
import torch
from torch import nn


class BagOfWords(nn.Module):
    def __init__(self, vocab=50, d=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.head = nn.Linear(d, 2)

    def forward(self, tokens):
        return self.head(self.embed(tokens).mean(dim=1))


def build_model():
    return BagOfWords()


def get_batch(step):
    return torch.randint(0, 30, (8, 6)), torch.randint(0, 2, (8,))   # tokens 30..49 never occur


def build_optimizer(params):
    return torch.optim.Adam(params, lr=1e-3, eps=0.0)  # nandoctor: origin
