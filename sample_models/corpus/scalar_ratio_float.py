# Source: https://github.com/valerystrizh/pytorch-histogram-loss/issues/12
# Mechanism: a hard-negative weight is taken as float(num_hard / num_neg); a batch with no negatives gives 0/0 = NaN, carried as a Python float into the loss.
import torch
from torch import nn


def build_model():
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 6))


def get_batch(step):
    x = torch.randn(12, 10)
    labels = torch.randint(0, 3, (12,))
    if step == 3:
        labels[:] = 1             # a batch drawn from one class only: no negative pairs
    return x, labels


def loss_fn(z, labels):
    z = nn.functional.normalize(z, dim=-1)
    sim = z @ z.t()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    pos = same & ~eye
    neg = ~same
    hard = neg & (sim > 0.5)
    hard_weight = float(hard.sum() / neg.sum())  # nandoctor: origin
    pos_loss = (1 - sim[pos]).mean()
    neg_loss = torch.relu(sim - 0.2).mul(neg).sum() / neg.sum().clamp(min=1)
    return pos_loss + (1 + hard_weight) * neg_loss
