# Source: https://github.com/microsoft/dion/pull/24
# Mechanism: a hand-written optimizer divides each gradient by its norm; a zero-initialised residual gate gives its branch an exactly zero gradient, 0/0 = NaN.
import torch
from torch import nn


class NormalizedSGD(torch.optim.Optimizer):
    def __init__(self, params, lr=0.01):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                direction = p.grad / p.grad.norm()  # nandoctor: origin
                p.add_(direction, alpha=-group["lr"])


class GatedResidual(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.branch = nn.Linear(d, d)
        self.gate = nn.Parameter(torch.zeros(1))   # ReZero-style gate, starts closed
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        return self.head(x + self.gate * torch.tanh(self.branch(x)))


def build_model():
    return GatedResidual()


def get_batch(step):
    return torch.randn(16, 16), torch.randint(0, 2, (16,))


def build_optimizer(params):
    return NormalizedSGD(params, lr=0.01)
