# Source: https://github.com/KempnerInstitute/KempnerForge/pull/119
# Mechanism: the ST-MoE router z-loss is mean(logsumexp(router_logits) ** 2). The router reads the un-normalised
# residual stream, so its logits are ~300; in float16 (16-true) the square passes 65504 and the auxiliary loss is
# inf from the first forward. float32 is finite.
import torch
from torch import nn
import torch.nn.functional as F


class MoE(nn.Module):
    def __init__(self, dim=32, experts=4):
        super().__init__()
        self.router = nn.Linear(dim, experts, bias=False)
        self.experts = nn.ModuleList(nn.Linear(dim, dim) for _ in range(experts))
        self.z_loss = None

    def forward(self, x):
        logits = self.router(x)
        z = torch.logsumexp(logits, dim=-1)
        self.z_loss = (z ** 2).mean()  # nandoctor: origin
        gate = torch.softmax(logits, dim=-1)
        return sum(gate[..., i:i + 1] * expert(x) for i, expert in enumerate(self.experts))


class Model(nn.Module):
    def __init__(self, dim=32, n_classes=4):
        super().__init__()
        self.moe = MoE(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x):
        return self.head(self.moe(x).mean(1)), self.moe.z_loss


def build_model():
    model = Model()
    with torch.no_grad():
        model.moe.router.weight.normal_(0.0, 2.0)
    return model


def get_batch(step):
    return torch.randn(2, 8, 32) * 25.0, torch.randint(0, 4, (2,))


def loss_fn(outputs, labels):
    logits, z_loss = outputs
    return F.cross_entropy(logits.float(), labels) + 1e-3 * z_loss.float()
