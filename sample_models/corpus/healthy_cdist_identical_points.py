# Source: https://github.com/pytorch/pytorch/issues/37154
# Healthy: a prototype network's torch.cdist between embeddings and prototypes, where some prototypes are copies of
# support embeddings (distance exactly 0). In torch 2.13 cdist's backward (mm path and direct path) is 0 at zero
# distance, so the gradients stay finite.
import torch
from torch import nn
import torch.nn.functional as F


class ProtoNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 16))

    def forward(self, support, query):
        s = self.embed(support)
        q = self.embed(query)
        protos = s.view(4, 5, 16).mean(1)
        points = torch.cat([q, s[::5]])          # the first support shot of each class queried again
        return -torch.cdist(points, torch.cat([protos, s[::5]]))


def build_model():
    return ProtoNet()


def get_batch(step):
    support = torch.randn(20, 24)
    query = torch.randn(12, 24)
    targets = torch.cat([torch.randint(0, 4, (12,)), torch.arange(4, 8)])
    return (support, query), targets


def loss_fn(neg_dist, targets):
    return F.cross_entropy(neg_dist, targets)
