# Source: https://github.com/shinya7y/UniverseNet/issues/14
# Mechanism: a detection head normalises its regression loss by the number of positive anchors; an image without objects gives 0 / 0 = NaN.
import torch
from torch import nn


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls = nn.Linear(8, 1)
        self.reg = nn.Linear(8, 4)

    def forward(self, feats):
        return self.cls(feats).squeeze(-1), self.reg(feats)


def build_model():
    return Head()


def get_batch(step):
    feats = torch.randn(50, 8)
    positive = torch.rand(50) < 0.1
    if step == 3:
        positive[:] = False   # an image without annotations (negative sample)
    boxes = torch.randn(50, 4)
    return feats, (positive, boxes)


def loss_fn(outputs, targets):
    logits, deltas = outputs
    positive, boxes = targets
    cls_loss = nn.functional.binary_cross_entropy_with_logits(logits, positive.float())
    reg_sum = (nn.functional.smooth_l1_loss(deltas, boxes, reduction="none").sum(-1) * positive).sum()
    avg_factor = positive.sum()
    return cls_loss + reg_sum / avg_factor  # nandoctor: origin
