# Source: https://github.com/huggingface/candle/issues/2561
# Mechanism: a siamese verification head scales cosine similarity by 30 (as in face recognition) and writes binary
# cross-entropy by hand; for a pair of identical images labelled "different" (a duplicate in the negatives),
# sigmoid(30) == 1.0 exactly in float32 and log(1 - p) = log(0) = -inf.
import torch
from torch import nn
import torch.nn.functional as F

SCALE = 30.0


class Siamese(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(256, 64))

    def forward(self, a, b):
        fa, fb = F.normalize(self.features(a), dim=1), F.normalize(self.features(b), dim=1)
        return torch.sigmoid(SCALE * (fa * fb).sum(dim=1))


def build_model():
    return Siamese()


def get_batch(step):
    a = torch.randn(8, 1, 16, 16)
    b = torch.randn(8, 1, 16, 16)
    same = torch.randint(0, 2, (8,)).float()
    b[same.bool()] = a[same.bool()] + 0.05 * torch.randn_like(a[same.bool()])
    b[0] = a[0]                 # a duplicated image in the negatives
    same[0] = 0.0
    return (a, b), same


def loss_fn(p, y):
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()  # nandoctor: origin
