# Source: https://github.com/alxndrTL/mamba.py/issues/53
# Mechanism: a selective-scan block forgets the softplus on delta, so delta is the raw (signed) projection; with
# A = -exp(A_log) negative, delta * A is large and positive wherever delta < 0, and exp(delta * A) overflows to
# inf in the discretisation; the scan then multiplies inf by 0 -> NaN. Every precision.
import torch
from torch import nn


class SelectiveSSM(nn.Module):
    def __init__(self, dim=16, state=8):
        super().__init__()
        self.delta_proj = nn.Linear(dim, dim)
        self.B = nn.Linear(dim, state, bias=False)
        self.C = nn.Linear(dim, state, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state + 1, dtype=torch.float32)).repeat(dim, 1))

    def forward(self, x):
        delta = self.delta_proj(x)                          # bug: softplus(delta) left out
        A = -torch.exp(self.A_log)
        deltaA = torch.exp(delta.unsqueeze(-1) * A)  # nandoctor: origin
        deltaBx = delta.unsqueeze(-1) * self.B(x).unsqueeze(2) * x.unsqueeze(-1)
        h = torch.zeros(x.shape[0], x.shape[2], A.shape[1])
        ys = []
        for t in range(x.shape[1]):
            h = deltaA[:, t] * h + deltaBx[:, t]
            ys.append((h * self.C(x)[:, t].unsqueeze(1)).sum(-1))
        return torch.stack(ys, dim=1)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.ssm = SelectiveSSM()
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.ssm(self.inp(x))[:, -1])


def build_model():
    return Model()


def get_batch(step):
    x = torch.randn(4, 12, 8) * 10.0
    return x, x[:, -1, :1]
