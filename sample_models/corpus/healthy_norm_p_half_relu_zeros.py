# Source: https://github.com/pytorch/pytorch/issues/44452
# Healthy: an L0.5 "sparsity" penalty torch.norm(h, p=0.5) on ReLU activations, which are exactly 0 for about
# half the units. The report's NaN (|x|**(p - 1) = inf at 0) is fixed in torch: the norm's backward masks exact
# zeros to a zero subgradient, so the gradients stay finite.
import torch
from torch import nn
import torch.nn.functional as F


class SparseAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(32, 64)
        self.dec = nn.Linear(64, 32)

    def forward(self, x):
        h = F.relu(self.enc(x))
        return self.dec(h), h


def build_model():
    return SparseAE()


def get_batch(step):
    x = torch.randn(32, 32)
    return x, x


def loss_fn(outputs, target):
    recon, h = outputs
    sparsity = torch.norm(h, p=0.5, dim=1).mean()
    return F.mse_loss(recon, target) + 1e-3 * sparsity
