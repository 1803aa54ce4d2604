"""Self-attention through F.scaled_dot_product_attention: a sample scaled by 1e20 at step 2
overflows the attention scores (float32 max 3.4e38) inside the fused kernel (tests/test_compat.py)."""
import torch
import torch.nn.functional as F
from torch import nn


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x):
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        return F.scaled_dot_product_attention(q, k, v).pow(2).mean()


def build_model():
    return Attn()


def get_batch(step):
    x = torch.randn(3, 5, 8)
    if step == 2:
        x[1] = x[1] * 1e20
    return x


def training_step(model, batch):
    return model(batch)
