# Source: https://github.com/pytorch/pytorch/issues/81985
# Healthy: nn.LayerNorm applied to zero-padded positions. Each padded row is constant (variance exactly 0), but
# nn.LayerNorm adds its eps inside the square root, so the rows normalise to 0 and the backward stays finite.
import torch
from torch import nn


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(60, 32, padding_idx=0)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 4)

    def forward(self, tokens):
        return self.head(self.norm(self.emb(tokens))).mean(1)


def build_model():
    return Tagger()


def get_batch(step):
    tokens = torch.randint(1, 60, (8, 16))
    tokens[:, 10:] = 0
    return tokens, torch.randint(0, 4, (8,))
