"""A deep MLP with a custom Gaussian initialisation."""
import torch
from torch import nn


class DeepMLP(nn.Module):
    def __init__(self, width=128, depth=10):
        super().__init__()
        layers = []
        for i in range(depth):
            layers += [nn.Linear(32 if i == 0 else width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=1.0)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.head(self.body(x))


def build_model():
    return DeepMLP()


def get_batch(step):
    x = torch.randn(32, 32)
    return x, x[:, :1]
