# Source: https://github.com/KempnerInstitute/KempnerForge/pull/119
# Mechanism: the router z-loss mean(logsumexp(logits) ** 2) is computed after casting the router logits to float32,
# as the reference implementations do, so under float16 autocast nothing overflows (logits ~300 << 65504, the
# square ~9e4 in float32). But the router's weights are initialised with std 2.0, ~18x a default Linear init: the
# logits are large because of that init. No NaN; a correct tool warns about the init (bad-init), nothing else.
# (Written as a healthy twin of moe_router_zloss_fp16.py; relabelled after first contact, see
# bench/corpus_round5_first_contact.txt: the tool's bad-init warning is right.)
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
        logits = self.router(x).float()
        z = torch.logsumexp(logits, dim=-1)
        self.z_loss = (z ** 2).mean()
        gate = torch.softmax(logits, dim=-1).to(x.dtype)
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
    return F.cross_entropy(logits.float(), labels) + 1e-6 * z_loss
