# Source: https://github.com/pytorch/pytorch/pull/184058
# Mechanism: a softmax temperature annealed linearly to zero; at step 100 logits / 0 gives inf and softmax(inf - inf) gives NaN.
import torch
from torch import nn

ANNEAL_STEPS = 100


class SoftAssign(nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = nn.Linear(12, 6)
        self.codebook = nn.Linear(6, 12, bias=False)

    def forward(self, x, tau):
        probs = torch.softmax(self.logits(x) / tau, dim=-1)  # nandoctor: origin
        return self.codebook(probs)


def build_model():
    return SoftAssign()


def get_batch(step):
    tau = max(1.0 - step / ANNEAL_STEPS, 0.0)     # anneal 1 -> 0; the floor should have been > 0
    x = torch.randn(16, 12)
    return (x, tau), x
