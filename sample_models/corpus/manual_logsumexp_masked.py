# Source: https://github.com/tinygrad/tinygrad/pull/17853
# Mechanism: a hand-written max-shifted logsumexp over masked scores; a fully masked row subtracts its max -inf from -inf: -inf - (-inf) = NaN.
import torch
from torch import nn


def masked_logsumexp(scores, mask):
    scores = scores.masked_fill(~mask, float("-inf"))
    m = scores.max(dim=-1, keepdim=True).values
    return m.squeeze(-1) + torch.log(torch.exp(scores - m).sum(-1))  # nandoctor: origin


class SpanScorer(nn.Module):
    def __init__(self):
        super().__init__()
        self.score = nn.Linear(8, 1)

    def forward(self, spans, valid):
        s = self.score(spans).squeeze(-1)
        return masked_logsumexp(s, valid)


def build_model():
    return SpanScorer()


def get_batch(step):
    spans = torch.randn(6, 10, 8)
    valid = torch.rand(6, 10) > 0.4
    valid[:, 0] = True
    if step == 6:
        valid[2] = False          # a document whose spans were all filtered out
    return (spans, valid), torch.randn(6)


def loss_fn(lse, target):
    return nn.functional.mse_loss(lse, target)
