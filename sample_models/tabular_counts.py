"""Click-count regression on log-transformed count features. Some rows have zero counts."""
import torch
from torch import nn


def build_model():
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1))


def get_batch(step):
    counts = torch.poisson(torch.full((64, 6), 3.0 if step < 3 else 0.6))
    features = torch.log(counts)
    target = counts.sum(dim=1, keepdim=True) / 10.0
    return features, target
