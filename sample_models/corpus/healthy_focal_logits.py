# Source: https://github.com/kornia/kornia/issues/918
# Healthy: the same detector as focal_gamma_half.py (prior bias -18.4, so p_t == 1 exactly for negatives), with the
# focal loss written from logits (BCE-with-logits, p_t = exp(-bce)) and gamma = 2: (1 - p_t) ** 2 has derivative 0 at 0.
import math

import torch
import torch.nn.functional as F
from torch import nn


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        )
        self.cls = nn.Conv2d(16, 1, 1)
        prior = 1e-8                             # objectness prior of a very rare class (RetinaNet-style bias init)
        nn.init.constant_(self.cls.bias, -math.log((1 - prior) / prior))

    def forward(self, x):
        return self.cls(self.body(x)).flatten(1)


def build_model():
    return Detector()


def get_batch(step):
    images = torch.rand(4, 3, 16, 16) * 4.0
    targets = (torch.rand(4, 256) > 0.9).float()
    return images, targets


def build_optimizer(params):
    return torch.optim.SGD(params, lr=1e-4, momentum=0.9)


def loss_fn(logits, targets, alpha=0.25, gamma=2.0):
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = torch.exp(-bce)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * (1 - p_t) ** gamma * bce).sum() / targets.sum().clamp(min=1)
