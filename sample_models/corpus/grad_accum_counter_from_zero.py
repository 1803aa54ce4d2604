# Source: https://github.com/karpathy/nanoGPT/issues/605
# Mechanism: the loss is scaled by the number of micro-steps accumulated so far, counted from zero: the first
# micro-step of every accumulation window divides the loss by 0, so the step-0 loss is inf and its backward fills
# the gradients with inf/NaN. In every precision.
import torch
from torch import nn
import torch.nn.functional as F

ACCUMULATION_STEPS = 4


def build_model():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def get_batch(step):
    return torch.randn(8, 16), torch.randint(0, 4, (8,)), step % ACCUMULATION_STEPS


def training_step(model, batch):
    x, y, micro_step = batch
    loss = F.cross_entropy(model(x), y)
    return loss / micro_step  # nandoctor: origin
