# Source: https://github.com/MCZhi/DIPP/issues/6
# Mechanism: a Gaussian-process layer factorises a kernel matrix built from learned features; without jitter it is singular and torch.linalg.cholesky raises.
import torch
from torch import nn


class GPHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.feat = nn.Linear(5, 3)

    def forward(self, x, y):
        f = self.feat(x)
        K = f @ f.t()                        # rank 3 for 12 points: not positive-definite
        L = torch.linalg.cholesky(K)  # nandoctor: origin
        alpha = torch.cholesky_solve(y[:, None], L)
        return (K @ alpha).squeeze(-1)


def build_model():
    return GPHead()


def get_batch(step):
    x = torch.randn(12, 5)
    y = torch.sin(x[:, 0])
    return (x, y), y
