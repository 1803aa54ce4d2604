# Source: https://github.com/MrLeeeee/GCN-GAT-and-Graphsage/issues/3
# Mechanism: GraphSAGE mean aggregation scales by degree.reciprocal(); a node with no sampled neighbours has 1/0 = inf.
import torch
from torch import nn


class SageLayer(nn.Module):
    def __init__(self, d=16, out=4):
        super().__init__()
        self.self_lin = nn.Linear(d, out)
        self.neigh_lin = nn.Linear(d, out)

    def forward(self, x, adj):
        degree = adj.sum(dim=1, keepdim=True)
        inv_degree = degree.reciprocal()  # nandoctor: origin
        neigh_mean = (adj @ x) * inv_degree
        return self.self_lin(x) + self.neigh_lin(neigh_mean)


def build_model():
    return SageLayer()


def get_batch(step):
    n = 20
    adj = (torch.rand(n, n) < 0.2).float()
    adj[3] = 0                 # the neighbour sampler returned no neighbours for node 3
    return (torch.randn(n, 16), adj), torch.randint(0, 4, (n,))
