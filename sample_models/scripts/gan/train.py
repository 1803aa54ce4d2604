"""Mirrors pytorch/examples dcgan/main.py (commit 77f55b9): a generator and a discriminator with
their own Adam optimizers (lr 2e-4, beta1 0.5), BCELoss on a Sigmoid output, the discriminator's
gradients accumulated over a real backward and a fake backward (fake.detach()) before
optimizerD.step(), then the generator step through netD(fake). Small MLPs on 8x8 random images
stand in for the conv nets on FakeData.

Healthy: nothing injected. Two optimizers, accumulated backwards and saturating BCE must pass.
"""
import argparse

import torch
import torch.nn as nn
import torch.optim as optim

parser = argparse.ArgumentParser()
parser.add_argument("--batchSize", type=int, default=16)
parser.add_argument("--nz", type=int, default=8)
parser.add_argument("--niter", type=int, default=2)
parser.add_argument("--lr", type=float, default=0.0002)
parser.add_argument("--beta1", type=float, default=0.5)
parser.add_argument("--manualSeed", type=int, default=1)
opt = parser.parse_args()
torch.manual_seed(opt.manualSeed)

dataset = torch.utils.data.TensorDataset(torch.rand(160, 64) * 2 - 1)
dataloader = torch.utils.data.DataLoader(dataset, batch_size=opt.batchSize, shuffle=True)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(opt.nz, 32), nn.BatchNorm1d(32), nn.ReLU(True), nn.Linear(32, 64),
                                  nn.Tanh())

    def forward(self, input):
        return self.main(input)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(64, 32), nn.LeakyReLU(0.2, inplace=True), nn.Linear(32, 1), nn.Sigmoid())

    def forward(self, input):
        return self.main(input).view(-1)


netG, netD = Generator(), Discriminator()
bce = nn.BCELoss()
optimizerD = optim.Adam(netD.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))
optimizerG = optim.Adam(netG.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))

for epoch in range(opt.niter):
    for i, (real,) in enumerate(dataloader):
        n = real.size(0)
        ones, zeros = torch.ones(n), torch.zeros(n)

        # discriminator: two backwards (real, then a detached fake) accumulate before one step
        netD.zero_grad()
        d_real = netD(real)
        loss_real = bce(d_real, ones)
        loss_real.backward()
        fake = netG(torch.randn(n, opt.nz))
        d_fake = netD(fake.detach())
        loss_fake = bce(d_fake, zeros)
        loss_fake.backward()
        optimizerD.step()

        # generator: make the discriminator call the fakes real
        netG.zero_grad()
        d_fooled = netD(fake)
        loss_g = bce(d_fooled, ones)
        loss_g.backward()
        optimizerG.step()

        print(f"[{epoch}/{opt.niter}][{i}/{len(dataloader)}] Loss_D: {(loss_real + loss_fake).item():.4f} "
              f"Loss_G: {loss_g.item():.4f} D(x): {d_real.mean().item():.4f} "
              f"D(G(z)): {d_fake.mean().item():.4f} / {d_fooled.mean().item():.4f}")
