# Source: https://github.com/rickgroen/cov-weighting/issues/3
# Mechanism: a loss weight is read with .item() from a 0-dim ratio of statistics; an empty mask makes it 0/0 = NaN and the Python float poisons the loss.
import torch
from torch import nn


class Segmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        return self.conv(x).squeeze(1)


def build_model():
    return Segmenter()


def get_batch(step):
    x = torch.randn(4, 3, 8, 8)
    mask = (torch.rand(4, 8, 8) < 0.2).float()
    if step == 2:
        mask.zero_()              # a tile with no foreground pixels
    return x, mask


def loss_fn(logits, mask):
    pred = (logits > 0).float()
    iou = (pred * mask).sum() / ((pred + mask).clamp(max=1) * mask).sum()  # nandoctor: origin
    weight = 1.0 - iou.item()
    return weight * nn.functional.binary_cross_entropy_with_logits(logits, mask)
