# Source: https://github.com/tdrussell/qlora-pipe/pull/3
# Mechanism: the warmup factor is written as step / warmup_steps and the config sets warmup_steps = 0: LambdaLR calls
# the lambda at construction (step 0), and 0 / 0 raises ZeroDivisionError before the first step.
import torch
from torch import nn

WARMUP_STEPS = 0


def build_model():
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 3))


def get_batch(step):
    return torch.randn(16, 12), torch.randint(0, 3, (16,))


def build_scheduler(optimizer):
    def factor(step):
        return min(1.0, step / WARMUP_STEPS)  # nandoctor: origin
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
