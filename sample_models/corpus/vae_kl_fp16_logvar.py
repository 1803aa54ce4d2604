# Source: https://github.com/NVIDIA/apex/issues/812
# Mechanism: a VAE's KL term uses logvar.exp(); under float16 autocast the encoder's logvar (~12 for these inputs)
# gives exp(logvar) ~ 1.6e5 > 65504 = inf in float16, while float32 stays finite.
import torch
from torch import nn
import torch.nn.functional as F


class VAE(nn.Module):
    def __init__(self, d_in=64, d_hidden=128, d_z=16):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_hidden), nn.ReLU())
        self.mu = nn.Linear(d_hidden, d_z)
        self.logvar = nn.Linear(d_hidden, d_z)
        with torch.no_grad():
            self.logvar.bias.fill_(12.0)    # a decoder-variance warm start copied from a high-noise dataset
        self.dec = nn.Sequential(nn.Linear(d_z, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_in))

    def forward(self, x):
        h = self.enc(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * 0.01
        return self.dec(z), mu, logvar


def build_model():
    return VAE()


def get_batch(step):
    x = torch.randn(32, 64)
    return x, x


def loss_fn(outputs, target):
    recon, mu, logvar = outputs
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)  # nandoctor: origin
    return F.mse_loss(recon.float(), target) + 1e-3 * kl.mean()
