# Source: https://github.com/pytorch/pytorch/issues/31829
# Healthy: logsumexp over masked scores done right: masked entries get finfo.min (not -inf) and fully masked rows are zeroed with torch.where, so value and gradient stay finite.
import torch
from torch import nn


class SpanScorer(nn.Module):
    def __init__(self):
        super().__init__()
        self.score = nn.Linear(8, 1)

    def forward(self, spans, valid):
        s = self.score(spans).squeeze(-1)
        s = s.masked_fill(~valid, torch.finfo(s.dtype).min)
        lse = torch.logsumexp(s, dim=-1)
        return torch.where(valid.any(dim=-1), lse, torch.zeros_like(lse))


def build_model():
    return SpanScorer()


def get_batch(step):
    spans = torch.randn(6, 10, 8)
    valid = torch.rand(6, 10) > 0.4
    valid[2] = False                  # a document without spans: handled
    return (spans, valid), torch.randn(6)
