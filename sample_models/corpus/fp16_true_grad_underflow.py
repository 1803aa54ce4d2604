# Source: https://github.com/mosaicml/composer/pull/725
# Mechanism: pure float16 training (model.half(), no loss scaling) of an image decoder with a mean loss divided by the accumulation steps: most gradients flush to exactly zero, no NaN.
import torch
from torch import nn

ACCUMULATION_STEPS = 32


def build_model():
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 3 * 32 * 32))
    nn.init.zeros_(model[2].weight)         # decoder starts from a blank image
    nn.init.zeros_(model[2].bias)
    return model


def get_batch(step):
    z = torch.randn(16, 16)
    return z, torch.randn(16, 3 * 32 * 32) * 0.02   # residual images, small values


def loss_fn(pred, y):
    return nn.functional.mse_loss(pred, y) / ACCUMULATION_STEPS
