# Source: https://github.com/pytorch/pytorch/issues/22442
# Healthy: a discrete-latent autoencoder with F.gumbel_softmax(hard=True, tau=0.1). torch samples the noise as
# -exponential_().log(), which is never log(0), and the straight-through estimator keeps gradients finite.
import torch
from torch import nn
import torch.nn.functional as F


class DiscreteAE(nn.Module):
    def __init__(self, d=32, k=16, n_latents=4):
        super().__init__()
        self.k, self.n = k, n_latents
        self.enc = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, k * n_latents))
        self.codebook = nn.Linear(k * n_latents, 64)
        self.dec = nn.Sequential(nn.ReLU(), nn.Linear(64, d))

    def forward(self, x):
        logits = self.enc(x).view(-1, self.n, self.k)
        z = F.gumbel_softmax(logits, tau=0.1, hard=True, dim=-1)
        return self.dec(self.codebook(z.flatten(1)))


def build_model():
    return DiscreteAE()


def get_batch(step):
    x = torch.randn(64, 32)
    return x, x
