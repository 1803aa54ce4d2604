# Source: https://github.com/NVIDIA/Megatron-LM/issues/535
# Healthy: rotary embeddings at positions past 65504 (a long document read from offset 65480) with the model in
# float16. The positions and angles are computed in float32 whatever the model's dtype and only cos/sin are cast
# down, so nothing overflows.
import torch
from torch import nn


class Rotary(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, x, offset):
        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.dim, 2, dtype=torch.float32) / self.dim))
        t = (torch.arange(x.shape[1]) + offset).float()
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin


class Block(nn.Module):
    def __init__(self, dim=32, n_classes=4):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.rope = Rotary(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x, offset):
        return self.head(self.rope(self.proj(x), offset).mean(1))


def build_model():
    return Block()


def get_batch(step):
    return (torch.randn(2, 48, 32), 65480), torch.randint(0, 4, (2,))
