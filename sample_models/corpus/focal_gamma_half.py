# Source: https://github.com/kornia/kornia/issues/918
# Mechanism: binary focal loss written from probabilities with gamma < 1; for a saturated logit sigmoid(x) == 1.0
# exactly, (1 - p_t) ** 0.5 has an infinite derivative at 0 and the upstream gradient there is 0 (log(p_t) == 0),
# so the backward of pow gives 0 * inf = NaN while the loss itself is finite.
import torch
from torch import nn


class Detector(nn.Module):
    """An objectness head: a few conv layers and a 1x1 classifier; the last layer is very confident."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        )
        self.cls = nn.Conv2d(16, 1, 1)
        with torch.no_grad():
            self.cls.weight.mul_(60.0)           # fine-tuned from an over-confident checkpoint
            self.cls.bias.fill_(-5.0)

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
