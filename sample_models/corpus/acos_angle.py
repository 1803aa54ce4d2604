# Source: https://discuss.pytorch.org/t/numerically-stable-acos-dot-product-derivative/12851
# Mechanism: acos of a cosine similarity computed by hand; rounding puts the dot product of identical unit vectors above 1, acos(1+eps) = NaN.
import torch
from torch import nn


class AngleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, a, b):
        ua = self.proj(a)
        ub = self.proj(b)
        ua = ua / ua.norm(dim=-1, keepdim=True)
        ub = ub / ub.norm(dim=-1, keepdim=True)
        cos = (ua * ub).sum(dim=-1)
        return torch.acos(cos)  # nandoctor: origin


def build_model():
    return AngleModel()


def get_batch(step):
    a = torch.randn(64, 8) * 3
    b = a.clone()
    b[32:] = torch.randn(32, 8)       # the first half are positive pairs: identical vectors
    target = torch.cat([torch.zeros(32), torch.full((32,), 1.5)])
    return (a, b), target
