# Source: https://github.com/pyg-team/pytorch_geometric/issues/61
# Mechanism: symmetric GCN normalisation deg.pow(-0.5) is inf for an isolated node (degree 0); 0 * inf gives NaN.
import torch
from torch import nn


class GCN(nn.Module):
    def __init__(self, d_in=8, d_out=3):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, x, adj):
        deg = adj.sum(dim=1)
        d_inv_sqrt = deg.pow(-0.5)  # nandoctor: origin
        norm_adj = d_inv_sqrt[:, None] * adj * d_inv_sqrt[None, :]
        return norm_adj @ self.lin(x)


def build_model():
    return GCN()


def get_batch(step):
    n = 12
    adj = (torch.rand(n, n) < 0.3).float()
    adj = ((adj + adj.t()) > 0).float()
    adj.fill_diagonal_(0)
    adj[7, :] = 0            # node 7 lost all its edges when the graph was subsampled
    adj[:, 7] = 0
    return (torch.randn(n, 8), adj), torch.randint(0, 3, (n,))
