"""A small CNN with BatchNorm on 16x16 images. Should scan clean."""
import torch
from torch import nn


class SmallConvNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(32, classes)

    def forward(self, images):
        return self.classifier(self.features(images).flatten(1))


def build_model():
    return SmallConvNet()


def get_batch(step):
    images = torch.rand(16, 3, 16, 16) * 2 - 1
    labels = torch.randint(0, 10, (16,))
    return images, labels
