# Source: https://github.com/pytorch/pytorch/issues/2721
# Healthy: WGAN-GP gradient penalty with torch's norm, where the critic's input gradient is exactly zero for
# zero-padded samples (no-bias conv + ReLU at 0). torch.linalg.vector_norm's backward returns 0 at a zero norm,
# so the penalty (norm - 1)^2 and its double backward stay finite.
import torch
from torch import nn


class Critic(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(2, 16, 5, padding=2, bias=False), nn.ReLU(),
            nn.Conv1d(16, 16, 5, padding=2, bias=False), nn.ReLU(),
            nn.Flatten(), nn.Linear(16 * 32, 1),
        )

    def forward(self, x):
        return self.net(x)


def build_model():
    return Critic()


def get_batch(step):
    real = torch.randn(8, 2, 32)
    fake = torch.randn(8, 2, 32)
    real[6:] = 0.0                       # zero-padded clips at the end of the epoch
    fake[6:] = 0.0
    return real, fake


def build_optimizer(params):
    return torch.optim.Adam(params, lr=1e-4, betas=(0.0, 0.9))


def training_step(model, batch, gp_weight=10.0):
    real, fake = batch
    eps = torch.rand(real.size(0), 1, 1)
    interp = (eps * real + (1 - eps) * fake).requires_grad_(True)
    grads, = torch.autograd.grad(model(interp).sum(), interp, create_graph=True)
    penalty = ((grads.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
    return model(fake).mean() - model(real).mean() + gp_weight * penalty
