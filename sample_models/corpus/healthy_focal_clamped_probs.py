# Source: https://github.com/NVIDIA/retinanet-examples/pull/93
# Healthy: a hand-written sigmoid focal loss that clamps the probabilities into [eps, 1 - eps] before the log and
# the power: confident logits (|z| up to 40, where sigmoid is exactly 0 or 1 in float32) stay finite.
import torch
from torch import nn


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
        with torch.no_grad():
            self.head[2].bias.fill_(-40.0)      # prior: background almost everywhere

    def forward(self, x):
        return self.head(x).squeeze(-1)


def build_model():
    return Detector()


def get_batch(step):
    x = torch.randn(128, 16)
    return x, (torch.rand(128) < 0.05).float()


def loss_fn(logits, targets, gamma=0.5, alpha=0.25, eps=1e-6):
    p = torch.sigmoid(logits.float()).clamp(eps, 1 - eps)
    pt = torch.where(targets > 0, p, 1 - p)
    at = torch.where(targets > 0, torch.full_like(p, alpha), torch.full_like(p, 1 - alpha))
    return (-at * (1 - pt) ** gamma * torch.log(pt)).sum() / max(1.0, targets.sum().item())
