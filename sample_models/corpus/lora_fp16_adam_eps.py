# Source: https://github.com/keras-team/keras-hub/issues/2629
# Mechanism: LoRA adapters are trained in the base model's half precision with Adam's default eps = 1e-8, which is 0
# in float16. B is initialised to zero, so A's gradient is exactly zero at step 0: A's second moment is 0, the
# update is m / (sqrt(v) + eps) = 0 / 0 = NaN, and A turns NaN in the first optimizer step. Only under 16-true;
# float32 (eps representable) is finite.
import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, d_in, d_out, rank=4, alpha=8):
        super().__init__()
        self.base = nn.Linear(d_in, d_out)
        self.base.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(rank, d_in) / math.sqrt(d_in))
        self.B = nn.Parameter(torch.zeros(d_out, rank))
        self.scaling = alpha / rank

    def forward(self, x):
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scaling


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = LoRALinear(16, 32)
        self.l2 = LoRALinear(32, 4)

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)))


def build_model():
    return Model()


def get_batch(step):
    return torch.randn(8, 16), torch.randint(0, 4, (8,))


def build_optimizer(params):
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=1e-3, eps=1e-8)  # nandoctor: origin
