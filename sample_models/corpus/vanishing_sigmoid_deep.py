# Source: https://oalahurikar.github.io/ai-blog/First-Principles/Learning-is-slow-for-sigmoid
# Mechanism: a 14-layer MLP with sigmoid activations (default init): every layer multiplies the gradient by
# sigmoid' <= 0.25, so the first layers' gradients are orders of magnitude below the last layers'. No NaN: a warning.
import torch
from torch import nn


def build_model():
    layers = [nn.Linear(20, 64), nn.Sigmoid()]
    for _ in range(12):
        layers += [nn.Linear(64, 64), nn.Sigmoid()]
    layers += [nn.Linear(64, 2)]
    return nn.Sequential(*layers)


def get_batch(step):
    x = torch.randn(64, 20)
    return x, (x[:, 0] > 0).long()
