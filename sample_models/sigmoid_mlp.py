"""A deep fully-connected classifier with sigmoid activations."""
import torch
from torch import nn


def build_model():
    layers = [nn.Linear(16, 64), nn.Sigmoid()]
    for _ in range(10):
        layers += [nn.Linear(64, 64), nn.Sigmoid()]
    layers.append(nn.Linear(64, 4))
    return nn.Sequential(*layers)


def get_batch(step):
    x = torch.randn(64, 16)
    return x, x[:, :4].argmax(dim=1)
