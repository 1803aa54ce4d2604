"""Mirrors pytorch/examples vae/main.py (commit 77f55b9): a fully connected variational
autoencoder trained on the negative ELBO (summed binary cross-entropy of a sigmoid decoder plus
the Gaussian KL term with logvar.exp()), Adam at 1e-3, a shuffling DataLoader, a log line per
batch. 8x8 images from a CSV file stand in for MNIST.

Injected bug (in expected.yaml): `--data data/digits_corrupt.csv`, whose image 37 has one NaN
pixel (a corrupt record). The NaN runs through the encoder into the reconstruction, and
F.binary_cross_entropy raises "all elements of input should be between 0 and 1".
"""
import argparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

PIXELS, HIDDEN, LATENT = 64, 32, 8


class Autoencoder(nn.Module):
    """x -> (mean, log-variance) of q(z|x); z = mean + sigma * noise; z -> Bernoulli means."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(PIXELS, HIDDEN)
        self.to_mean = nn.Linear(HIDDEN, LATENT)
        self.to_logvar = nn.Linear(HIDDEN, LATENT)
        self.dec_hidden = nn.Linear(LATENT, HIDDEN)
        self.dec_out = nn.Linear(HIDDEN, PIXELS)

    def forward(self, images):
        h = F.relu(self.enc(images.reshape(-1, PIXELS)))
        mean, logvar = self.to_mean(h), self.to_logvar(h)
        z = mean + torch.randn_like(mean) * torch.exp(logvar / 2)
        recon = torch.sigmoid(self.dec_out(F.relu(self.dec_hidden(z))))
        return recon, mean, logvar


def negative_elbo(recon, images, mean, logvar):
    reconstruction = F.binary_cross_entropy(recon, images.reshape(-1, PIXELS), reduction="sum")
    kl = 0.5 * torch.sum(mean.pow(2) + logvar.exp() - 1 - logvar)
    return reconstruction + kl


def main():
    parser = argparse.ArgumentParser(description="VAE on 8x8 digits")
    parser.add_argument("--data", default="data/digits.csv")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    pixels = torch.from_numpy(np.loadtxt(args.data, delimiter=",", dtype=np.float32))
    loader = DataLoader(TensorDataset(pixels), batch_size=args.batch_size, shuffle=True)
    vae = Autoencoder()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)

    for epoch in range(1, args.epochs + 1):
        vae.train()
        epoch_loss = 0.0
        for i, (images,) in enumerate(loader):
            opt.zero_grad()
            recon, mean, logvar = vae(images)
            loss = negative_elbo(recon, images, mean, logvar)
            loss.backward()
            opt.step()
            epoch_loss += loss.item()
            print(f"epoch {epoch} batch {i}: loss per image {loss.item() / len(images):.4f}")
        print(f"epoch {epoch}: mean loss {epoch_loss / len(loader.dataset):.4f}")


if __name__ == "__main__":
    main()
