# Source: https://github.com/fastino-ai/GLiNER2/pull/155
# Mechanism: probabilities are clamped to 1 - 1e-6 before log1p(-p), but 1 - 1e-6 rounds to exactly 1.0 in
# bfloat16, so under bf16 autocast the clamp is a no-op: a saturated sigmoid (logit > ~6) gives p = 1 and
# log1p(-1) = -inf in the loss. float32 keeps 1 - 1e-6 and stays finite.
import torch
from torch import nn


def build_model():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def get_batch(step):
    x = torch.randn(16, 16) * 30.0
    return x, (torch.rand(16, 8) < 0.3).float()


def loss_fn(logits, targets):
    p = torch.sigmoid(logits).clamp(min=1e-6, max=1.0 - 1e-6)
    log_survival = torch.log1p(-p)  # nandoctor: origin
    return -(targets * torch.log(p) + (1 - targets) * log_survival).mean()
