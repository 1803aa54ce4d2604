# Source: https://github.com/pytorch/pytorch/issues/31829
# Mechanism: a multi-positive contrastive loss takes logsumexp over positives selected with -inf masks; an anchor with no positive gives logsumexp = -inf and an inf loss.
import torch
from torch import nn


def build_model():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def get_batch(step):
    x = torch.randn(16, 16)
    labels = torch.randint(0, 3, (16,))
    if step == 4:
        labels[0] = 3            # a class that occurs once in the batch: the anchor has no positive
    return x, labels


def loss_fn(z, labels):
    z = nn.functional.normalize(z, dim=-1)
    sim = z @ z.t() / 0.1
    eye = torch.eye(len(labels), dtype=torch.bool)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    pos_logits = sim.masked_fill(~positive, float("-inf"))
    all_logits = sim.masked_fill(eye, float("-inf"))
    pos_term = torch.logsumexp(pos_logits, dim=1)  # nandoctor: origin
    return (torch.logsumexp(all_logits, dim=1) - pos_term).mean()
