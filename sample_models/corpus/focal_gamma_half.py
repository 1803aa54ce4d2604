# Source: https://github.com/kornia/kornia/issues/918
# Mechanism: binary focal loss written from probabilities with gamma < 1. The classifier bias starts at the prior
# logit -18.4, so for negatives 1 - sigmoid(x) == 1.0 exactly in float32: p_t == 1, (1 - p_t) ** 0.5 has an infinite
# derivative at 0 while the upstream gradient there is 0 (log(p_t) == 0), and pow's backward gives 0 * inf = NaN.
# The loss itself is finite.
import math

import torch
from torch import nn


class Detector(nn.Module):
    """An objectness head: a few conv layers and a 1x1 classifier with a rare-class prior bias."""

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


def loss_fn(logits, targets, alpha=0.25, gamma=0.5):
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    modulating = (1 - p_t) ** gamma  # nandoctor: origin
    ce = -torch.log(p_t.clamp(min=1e-12))
    return (alpha_t * modulating * ce).sum() / targets.sum().clamp(min=1)
