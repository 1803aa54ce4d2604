# Source: https://github.com/facebookresearch/detr/issues/285
# Mechanism: a small CNN trained with SGD + momentum and OneCycleLR whose max_lr was set to 8.0 (meant as a
# multiplier of the base lr, passed as an absolute rate): the schedule ramps up and training diverges to inf/NaN
# after a few dozen steps.
import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def build_model():
    return SmallCNN()


def get_batch(step):
    x = torch.randn(32, 3, 16, 16)
    return x, torch.randint(0, 10, (32,))


def build_optimizer(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def build_scheduler(optimizer):
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=8.0, total_steps=200, pct_start=0.3)
