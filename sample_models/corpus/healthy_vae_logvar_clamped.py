# Source: https://github.com/vanderschaarlab/synthcity/issues/331
# Healthy: a VAE whose encoder log-variance starts far too high (bias 40) but is clamped to [-30, 20] before
# any exp, as the report recommends, and whose KL term is computed in float32: exp(20) ~ 4.9e8 is finite.
import torch
from torch import nn
import torch.nn.functional as F


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(32, 64), nn.ReLU())
        self.mu = nn.Linear(64, 8)
        self.logvar = nn.Linear(64, 8)
        with torch.no_grad():
            self.logvar.bias.fill_(40.0)
        self.dec = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 32))

    def forward(self, x):
        h = self.enc(x)
        mu, logvar = self.mu(h), self.logvar(h).clamp(-30.0, 20.0)
        z = mu + 1e-3 * torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.dec(z), mu, logvar


def build_model():
    return VAE()


def get_batch(step):
    x = torch.randn(32, 32)
    return x, x


def loss_fn(outputs, x):
    recon, mu, logvar = outputs
    mu, logvar = mu.float(), logvar.float()
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1).mean()
    return F.mse_loss(recon.float(), x) + 1e-6 * kl
