# Source: https://github.com/ryanchankh/mcr2/issues/1
# Mechanism: coding-rate loss calls torch.logdet on I - alpha*Z^T Z, whose determinant is negative; logdet of a negative-determinant matrix is NaN.
import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(10, 4)

    def forward(self, x):
        return self.net(x)


def build_model():
    return Encoder()


def get_batch(step):
    return torch.randn(16, 10), torch.zeros(16)


def loss_fn(z, _):
    eye = torch.eye(z.shape[1])
    # sign error: the rate-distortion term should be I + alpha * Z^T Z
    cov = eye - 2.0 * z.t() @ z / z.shape[0]
    return -0.5 * torch.logdet(cov)  # nandoctor: origin
