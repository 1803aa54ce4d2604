# Source: https://github.com/pytorch/pytorch/pull/3336
# Mechanism: F.poisson_nll_loss(log_input=False) computes input - target * log(input + eps) with eps=1e-8 added
# precisely so that a zero rate does not give log(0). In float16 1e-8 rounds to 0, so a ReLU rate of exactly 0 gives
# log(0) = -inf, and 0 * -inf = NaN for a zero count. float32 stays finite.
import torch
import torch.nn.functional as F
from torch import nn


class SpikeCountModel(nn.Module):
    """Predicts per-neuron spike counts (Poisson rates) from stimulus features; rates are ReLU outputs."""

    def __init__(self, n_stim=24, n_neurons=40):
        super().__init__()
        self.core = nn.Sequential(nn.Linear(n_stim, 64), nn.Softplus(), nn.Linear(64, n_neurons))

    def forward(self, stim):
        return torch.relu(self.core(stim))


def build_model():
    return SpikeCountModel()


def get_batch(step):
    stim = torch.randn(32, 24)
    counts = torch.poisson(torch.full((32, 40), 0.8))
    return stim, counts


def loss_fn(rates, counts):
    return F.poisson_nll_loss(rates, counts, log_input=False)  # nandoctor: origin
