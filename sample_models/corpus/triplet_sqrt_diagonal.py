# Source: https://github.com/adambielski/siamese-triplet/issues/31
# Mechanism: batch-hard triplet loss on Euclidean distances computed as sqrt of squared pairwise differences; the
# diagonal (an embedding with itself) is exactly 0, the mining masks it out (gradient 0 there), and the backward of
# sqrt at 0 is 0 / (2 * sqrt(0)) = 0/0 = NaN. The loss is finite.
import torch
from torch import nn


class EmbeddingNet(nn.Module):
    def __init__(self, n_in=32, dim=16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, 64), nn.ReLU(), nn.Linear(64, dim))

    def forward(self, x):
        return self.net(x)


def build_model():
    return EmbeddingNet()


def get_batch(step):
    labels = torch.arange(8).repeat_interleave(4)          # P=8 identities x K=4 samples (PK sampler)
    x = torch.randn(8, 32)[labels] + 0.3 * torch.randn(32, 32)
    return x, labels


def pairwise_distance(emb):
    diff = emb.unsqueeze(1) - emb.unsqueeze(0)
    return diff.pow(2).sum(-1).sqrt()  # nandoctor: origin


def loss_fn(emb, labels, margin=0.3):
    dist = pairwise_distance(emb)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool)
    hardest_pos = (dist * (same & ~eye).float()).max(dim=1).values
    hardest_neg = (dist + 1e6 * same.float()).min(dim=1).values
    return torch.relu(hardest_pos - hardest_neg + margin).mean()
