# Source: https://github.com/nvidia-cosmos/cosmos-rl/pull/155
# Healthy: supervised fine-tuning whose every 4th batch holds only prompt tokens (all labels -100). The loss is the
# token sum divided by the kept-token count clamped to at least 1, so a prompt-only batch gives a zero loss and zero
# gradients instead of 0 / 0.
import torch
from torch import nn
import torch.nn.functional as F


class TinyLM(nn.Module):
    def __init__(self, vocab=40, dim=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, vocab))

    def forward(self, tokens):
        return self.mlp(self.emb(tokens))


def build_model():
    return TinyLM()


def get_batch(step):
    tokens = torch.randint(0, 40, (4, 12))
    labels = tokens.roll(-1, dims=1).clone()
    labels[:, :12 if step % 4 == 3 else 5] = -100
    return tokens, labels


def loss_fn(logits, labels):
    flat = labels.flatten()
    total = F.cross_entropy(logits.flatten(0, 1).float(), flat, ignore_index=-100, reduction="sum")
    return total / (flat != -100).sum().clamp(min=1)
