# Source: https://github.com/pytorch/pytorch/issues/103749
# Healthy: scaled_dot_product_attention with a boolean causal + key-padding mask in which every query keeps at least one key (lengths >= 1).
import torch
from torch import nn


class TinyDecoder(nn.Module):
    def __init__(self, vocab=50, d=32, heads=4):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, vocab)

    def forward(self, tokens, lengths):
        b, t = tokens.shape
        x = self.embed(tokens)
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        keep_key = torch.arange(t)[None, :] < lengths[:, None]
        mask = causal[None, None] & keep_key[:, None, None, :]
        h = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(h.transpose(1, 2).reshape(b, t, -1))


def build_model():
    return TinyDecoder()


def get_batch(step):
    tokens = torch.randint(0, 50, (6, 10))
    lengths = torch.randint(1, 11, (6,))
    targets = torch.randint(0, 50, (6, 10)).masked_fill(torch.arange(10)[None, :] >= lengths[:, None], -100)
    return (tokens, lengths), targets


def loss_fn(logits, targets):
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
