"""A metric-learning embedding trained on a pairwise-distance matrix of the batch."""
import torch
from torch import nn


class Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))

    def forward(self, x):
        z = self.net(x)
        diff = z[:, None, :] - z[None, :, :]
        return torch.sqrt((diff ** 2).sum(dim=-1))


def build_model():
    return Embedder()


def get_batch(step):
    x = torch.randn(24, 16)
    same = (torch.arange(24)[:, None] // 4 == torch.arange(24)[None, :] // 4).float()
    return x, same


def loss_fn(distances, same):
    margin = 1.0
    positive = same * distances ** 2
    negative = (1 - same) * torch.clamp(margin - distances, min=0) ** 2
    return (positive + negative).mean()
