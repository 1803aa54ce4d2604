# Source: https://github.com/huggingface/transformers/issues/5651
# Mechanism: a T5-style feed-forward block produces activations above 65504; finite in float32, inf under float16 autocast.
import torch
from torch import nn


class DenseReluDense(nn.Module):
    def __init__(self, d=32, ff=128):
        super().__init__()
        self.wi = nn.Linear(d, ff, bias=False)
        self.wo = nn.Linear(ff, d, bias=False)
        with torch.no_grad():
            self.wi.weight.mul_(30.0)        # weights of a checkpoint trained in bf16, large in magnitude
            self.wo.weight.mul_(30.0)

    def forward(self, x):
        return self.wo(torch.relu(self.wi(x)))  # nandoctor: origin


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.ff = DenseReluDense()
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.norm(self.ff(x)))


def build_model():
    return Model()


def get_batch(step):
    return torch.randn(8, 32) * 200, torch.randint(0, 4, (8,))   # residual-stream hidden states, not normalised
