"""A demand forecaster: a ReLU RNN over 60 time steps.

The recurrent matrix is "identity-initialised" as in the IRNN paper, but scaled by 1.7 by
mistake: the hidden state grows by ~1.7x per time step, so after 60 steps the activations
are ~1e13 and the loss ~1e25 at step 0, before any update.
"""
import torch
from torch import nn


class Forecaster(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(3, 24, nonlinearity="relu", batch_first=True)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(torch.eye(24) * 1.7)
        self.head = nn.Linear(24, 1)

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.head(h[:, -1])


def build_model():
    return Forecaster()


def get_batch(step):
    x = torch.rand(8, 60, 3)
    return x, x[:, -1, :1]


def build_optimizer(params):
    return torch.optim.SGD(params, lr=0.01)
