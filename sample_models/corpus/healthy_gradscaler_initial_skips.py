# Source: https://github.com/pytorch/pytorch/issues/55585
# Healthy: a loss summed over a large batch gives gradients of ~1e2, so under 16-mixed the first GradScaler
# steps (scale 65536) find inf gradients and skip the update, halving the scale until it fits. That is the
# scaler working as designed; the weights never see a non-finite value and float32 is unaffected.
import torch
from torch import nn
import torch.nn.functional as F


def build_model():
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))


def get_batch(step):
    return torch.randn(512, 32), torch.randint(0, 8, (512,))


def loss_fn(logits, labels):
    return F.cross_entropy(logits.float(), labels, reduction="sum") / 8.0
