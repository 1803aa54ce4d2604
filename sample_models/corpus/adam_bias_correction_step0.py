# Source: https://github.com/keras-team/keras/pull/10129
# Mechanism: a hand-written Adam whose step counter starts at 0: the bias corrections 1 - beta1**0 and
# 1 - beta2**0 are exactly 0, so the very first update divides the zero-initialised moments by 0 (0/0 = NaN)
# and every parameter becomes NaN. The forward pass, the loss and the gradients are all finite.
import torch
from torch import nn


class HandAdam(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["t"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                m, v, t = state["m"], state["v"], state["t"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = m / (1 - beta1 ** t)  # nandoctor: origin
                v_hat = v / (1 - beta2 ** t)
                p.add_(-group["lr"] * m_hat / (v_hat.sqrt() + group["eps"]))
                state["t"] = t + 1      # incremented after use: the first step runs with t = 0


def build_model():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def get_batch(step):
    return torch.randn(32, 16), torch.randint(0, 4, (32,))


def build_optimizer(params):
    return HandAdam(params, lr=1e-3)
