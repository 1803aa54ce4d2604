"""A GAN whose discriminator step runs inside training_step (its own optimizer, its own
backward); the generator's loss is returned. A zero real sample at step 2 puts 0 * inf into the
discriminator's backward (|h| = sqrt(h * h) at 0) (tests/test_compat.py)."""
import torch
from torch import nn


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.out = nn.Linear(8, 1)

    def forward(self, x):
        h = self.inp(x) * (x.abs().sum(-1, keepdim=True) > 0)
        return self.out(torch.sqrt(h * h))


class GAN(nn.Module):
    def __init__(self):
        super().__init__()
        self.generator = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 4))
        self.discriminator = Discriminator()
        self.d_optimizer = torch.optim.SGD(self.discriminator.parameters(), lr=0.01)


def build_model():
    return GAN()


def build_optimizer(params):
    return torch.optim.SGD(params, lr=0.01)


def get_batch(step):
    real = torch.randn(8, 4)
    if step == 2:
        real[3] = 0.0
    return real


def training_step(model, batch):
    real = batch
    fake = model.generator(torch.randn(real.shape[0], 2))
    bce = nn.functional.binary_cross_entropy_with_logits
    d_real, d_fake = model.discriminator(real), model.discriminator(fake.detach())
    loss_d = bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))
    model.d_optimizer.zero_grad()
    loss_d.backward()
    model.d_optimizer.step()
    d_out = model.discriminator(fake)
    return bce(d_out, torch.ones_like(d_out))
