# Source: https://thedebonair.co.uk/post/variational-autoencoder-kl-divergence-loss-explodes-and-the
# Mechanism: the VAE's KL term computes logvar.exp() on an unbounded encoder output; logvar above ~88.7 overflows float32 to inf.
import torch
from torch import nn


class VAE(nn.Module):
    def __init__(self, d=64, z=4):
        super().__init__()
        self.enc = nn.Linear(d, 2 * z)
        self.dec = nn.Linear(z, d)

    def forward(self, x):
        mu, logvar = self.enc(x).chunk(2, dim=-1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar.clamp(max=10))   # sampling is guarded, the KL term is not
        return self.dec(z), mu, logvar


def build_model():
    return VAE()


def get_batch(step):
    x = torch.rand(16, 64) * 255.0     # raw 8-bit pixel intensities, never scaled to [0, 1]
    return x, x


def loss_fn(outputs, x):
    recon, mu, logvar = outputs
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())  # nandoctor: origin
    return nn.functional.mse_loss(recon, x) + kld / x.shape[0]
