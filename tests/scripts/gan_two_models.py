"""A GAN in a plain loop: two models with their own optimizers, the discriminator stepped first.
A zero real sample (row 9, in the batch of step 2) puts 0 * inf into the discriminator's backward
(|h| = sqrt(h * h) at 0): in D's own forward, or with `--in-net` in its module `net.1`."""
import sys

import torch
from torch import nn


class Magnitude(nn.Module):
    def forward(self, h):
        return torch.sqrt(h * h)


class Discriminator(nn.Module):
    def __init__(self, in_net):
        super().__init__()
        self.in_net = in_net
        self.net = nn.Sequential(nn.Linear(4, 8), Magnitude(), nn.Linear(8, 1))

    def forward(self, x):
        h = self.net[0](x) * (x.abs().sum(-1, keepdim=True) > 0)
        h = self.net[1](h) if self.in_net else torch.sqrt(h * h)
        return self.net[2](h)


def main():
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 4))
    D = Discriminator("--in-net" in sys.argv)
    opt_g = torch.optim.SGD(G.parameters(), lr=0.01)
    opt_d = torch.optim.SGD(D.parameters(), lr=0.01)
    bce = nn.functional.binary_cross_entropy_with_logits
    real_data = torch.randn(24, 4, generator=torch.Generator().manual_seed(0))
    real_data[9] = 0.0
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(real_data), batch_size=4)
    for (real,) in loader:
        fake = G(torch.randn(real.shape[0], 2))
        d_real, d_fake = D(real), D(fake.detach())
        loss_d = bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        d_out = D(fake)
        loss_g = bce(d_out, torch.ones_like(d_out))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()


if __name__ == "__main__":
    main()
