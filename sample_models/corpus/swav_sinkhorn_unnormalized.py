# Source: https://github.com/facebookresearch/swav/issues/67
# Mechanism: SwAV-style codes from a Sinkhorn-Knopp step, Q = exp(scores / epsilon) with epsilon = 0.05, where
# the features were not L2-normalised before the prototype layer: scores of ~10 give exp(200) = inf in float32,
# and the normalisation Q / Q.sum() is inf / inf = NaN. The codes are the targets of the swapped prediction loss.
import torch
from torch import nn
import torch.nn.functional as F


class SwAVHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 64))
        self.prototypes = nn.Linear(64, 16, bias=False)

    def forward(self, x):
        z = self.backbone(x)             # missing: z = F.normalize(z, dim=1)
        return self.prototypes(z)


def build_model():
    return SwAVHead()


def get_batch(step):
    x = torch.randn(64, 32) * 16.0
    return x, torch.zeros(64)


@torch.no_grad()
def sinkhorn(scores, epsilon=0.05, iters=3):
    q = torch.exp(scores / epsilon).t()  # nandoctor: origin
    q /= q.sum()
    k, b = q.shape
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def loss_fn(scores, _unused):
    codes = sinkhorn(scores.detach())
    return -(codes * F.log_softmax(scores / 0.1, dim=1)).sum(dim=1).mean()
