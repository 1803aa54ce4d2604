"""Store-level demand forecasting: a summed squared error over a large batch of stores."""
import torch
from torch import nn
import torch.nn.functional as F


def build_model():
    return nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def get_batch(step):
    features = torch.randn(2048, 12)
    demand = 800 + 300 * features[:, :1].abs()
    return features, demand


def loss_fn(predicted, demand):
    return F.mse_loss(predicted, demand, reduction="sum")
