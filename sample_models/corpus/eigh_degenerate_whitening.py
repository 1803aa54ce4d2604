# Source: https://github.com/XanaduAI/GradDFT/issues/35
# Mechanism: a ZCA whitening layer (decorrelated batch norm) differentiates through torch.linalg.eigh of the batch
# covariance. Two channels are dead after the ReLU, so the covariance has a repeated eigenvalue (eps, eps) and the
# eigenvector gradient 1 / (lambda_i - lambda_j) is 1/0: the forward is finite, the backward is not.
import torch
from torch import nn


class ZCAWhitening(nn.Module):
    def __init__(self, num_features, eps=1e-3):
        super().__init__()
        self.eps = eps
        self.register_buffer("eye", torch.eye(num_features))

    def forward(self, x):
        xc = x - x.mean(0, keepdim=True)
        cov = xc.t() @ xc / x.size(0) + self.eps * self.eye
        evals, evecs = torch.linalg.eigh(cov)  # nandoctor: origin
        w = evecs @ torch.diag(evals.rsqrt()) @ evecs.t()
        return xc @ w


class WhitenedMLP(nn.Module):
    def __init__(self, n_in=16, hidden=8, n_classes=4):
        super().__init__()
        self.fc = nn.Linear(n_in, hidden)
        self.white = ZCAWhitening(hidden)
        self.head = nn.Linear(hidden, n_classes)
        with torch.no_grad():
            self.fc.bias[:2].fill_(-50.0)        # two units never fire (dead ReLUs after a bad warm start)

    def forward(self, x):
        return self.head(self.white(torch.relu(self.fc(x))))


def build_model():
    return WhitenedMLP()


def get_batch(step):
    return torch.randn(64, 16), torch.randint(0, 4, (64,))
