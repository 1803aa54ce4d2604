# Source: https://github.com/NVIDIA/Megatron-LM/issues/535
# Mechanism: rotary positions are cast with `type_as(inv_freq)`; with the model in float16 the buffer is float16, so
# positions past 65504 (a long document read from offset 65480) become inf, the angles inf, and cos/sin of inf NaN.
# Only under 16-true (the buffer stays float32 under autocast); float32 is finite.
import torch
from torch import nn


class Rotary(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)), persistent=False)

    def forward(self, x, offset):
        seq = torch.arange(x.shape[1], device=x.device) + offset
        t = seq.type_as(self.inv_freq)  # nandoctor: origin
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * emb.cos() + rotated * emb.sin()


class Block(nn.Module):
    def __init__(self, dim=32, n_classes=4):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.rope = Rotary(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x, offset):
        h = self.rope(self.proj(x), offset)
        return self.head(h.mean(1))


def build_model():
    return Block()


def get_batch(step):
    return (torch.randn(2, 48, 32), 65480), torch.randint(0, 4, (2,))
