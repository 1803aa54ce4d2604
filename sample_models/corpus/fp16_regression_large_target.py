# Source: https://github.com/pytorch/pytorch/issues/40497
# Mechanism: a regression head trained on unnormalised targets around 9e4 (prices in cents). The prediction
# grows towards the targets step by step; under float16 autocast the head's output passes 65504 and is inf
# after step 30, so the (float32) MSE is inf and the gradients NaN. Float32 stays finite (the loss is divided by
# 1e6 to look normal; the targets' scale is what matters).
import torch
from torch import nn


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.body(x))  # nandoctor: origin


def build_model():
    return Regressor()


def get_batch(step):
    x = torch.rand(32, 8)
    y = 90000.0 + 1000.0 * x[:, :1]         # raw targets, never standardised
    return x, y


def loss_fn(pred, y):
    return torch.nn.functional.mse_loss(pred.float(), y) / 1e6     # "normalised" loss, targets left raw


def build_optimizer(params):
    return torch.optim.Adam(params, lr=1.0)
