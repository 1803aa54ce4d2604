# Source: https://github.com/pytorch/pytorch/issues/32137
# Mechanism: F.normalize's default eps=1e-12 rounds to 0 in float16, so the clamp that guards the division does
# nothing; a zero feature vector (an all-padding token's pooled embedding) gives 0/0 = NaN. float32 stays finite.
import torch
import torch.nn.functional as F
from torch import nn


class RetrievalHead(nn.Module):
    """Mean-pooled token embeddings, L2-normalised, scored against learned class prototypes (cosine classifier)."""

    def __init__(self, vocab=200, dim=32, n_classes=6, scale=10.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.prototypes = nn.Parameter(torch.randn(n_classes, dim))
        self.scale = scale

    def forward(self, tokens):
        mask = (tokens != 0).unsqueeze(-1).to(self.embed.weight.dtype)
        pooled = (self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1)
        z = F.normalize(self.proj(pooled), dim=-1)  # nandoctor: origin
        w = F.normalize(self.prototypes, dim=-1)
        return self.scale * z @ w.t()


def build_model():
    return RetrievalHead()


def get_batch(step):
    tokens = torch.randint(1, 200, (12, 10))
    tokens[:, 7:] = 0
    tokens[5] = 0                      # an empty document after truncation: every position is padding
    return tokens, torch.randint(0, 6, (12,))
