"""A classifier with a learnable softmax temperature, stored in log space."""
import torch
from torch import nn

INITIAL_TEMPERATURE = 0.0   # from the experiment config


class CalibratedClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))
        self.log_temperature = nn.Parameter(torch.log(torch.tensor([INITIAL_TEMPERATURE])))

    def forward(self, x):
        return self.body(x) / self.log_temperature.exp()


def build_model():
    return CalibratedClassifier()


def get_batch(step):
    x = torch.randn(32, 12)
    return x, x[:, :4].argmax(dim=1)
