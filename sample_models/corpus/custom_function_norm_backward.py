# Source: https://github.com/pytorch/pytorch/issues/2721
# Mechanism: a hand-written autograd.Function for the L2 norm (as torch's own old Norm function did) divides the
# incoming gradient by the norm in backward; an empty set (a user with no interactions) pools to the zero vector,
# whose norm is 0, so backward computes 0/0 = NaN while the forward is finite.
import torch
from torch import nn


class RowL2Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        norm = x.pow(2).sum(-1, keepdim=True).sqrt()
        ctx.save_for_backward(x, norm)
        return norm

    @staticmethod
    def backward(ctx, grad_out):
        x, norm = ctx.saved_tensors
        return grad_out * x / norm  # nandoctor: origin


class FeatureNormRegularised(nn.Module):
    """A set classifier (mean-pooled item embeddings) whose loss adds a feature-norm regulariser (ring loss style),
    computed with a custom Function."""

    def __init__(self):
        super().__init__()
        self.items = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
        self.head = nn.Linear(8, 4)

    def forward(self, items, valid):
        mask = valid.unsqueeze(-1).float()
        f = (self.items(items) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(f), RowL2Norm.apply(f)


def build_model():
    return FeatureNormRegularised()


def get_batch(step):
    items = torch.randn(32, 6, 16)
    valid = torch.rand(32, 6) > 0.3
    valid[7] = False                        # a user with no interactions in this window
    return (items, valid), torch.randint(0, 4, (32,))


def loss_fn(outputs, targets, target_norm=1.0, weight=0.01):
    logits, norms = outputs
    ring = (norms - target_norm).pow(2).mean()
    return nn.functional.cross_entropy(logits, targets) + weight * ring
