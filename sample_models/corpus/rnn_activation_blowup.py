# Source: https://stats.stackexchange.com/posts/487195/revisions
# Mechanism: a ReLU RNN whose recurrent matrix is initialised above identity scale multiplies its state by ~1.8 per time step: activations ~1e12 and a ~1e22 loss at step 0.
import torch
from torch import nn


class Forecaster(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(4, 32, nonlinearity="relu", batch_first=True)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(torch.eye(32) * 1.8)   # "identity init", but scaled by mistake
        self.out = nn.Linear(32, 1)

    def forward(self, x):
        h, _ = self.rnn(x)  # nandoctor: origin
        return self.out(h[:, -1])


def build_model():
    return Forecaster()


def get_batch(step):
    x = torch.rand(8, 50, 4)
    return x, x[:, -1, :1]


def build_optimizer(params):
    return torch.optim.SGD(params, lr=0.01)
