# Source: https://github.com/pytorch/pytorch/issues/40932
# Mechanism: a Transformer encoder layer built on nn.MultiheadAttention (need_weights left at its default True) gets a
# key_padding_mask that is True for every key of one sample (an all-<pad> sentence): softmax over a row of -inf is NaN.
import torch
from torch import nn

VOCAB, PAD, D, HEADS, SEQ = 100, 0, 32, 4, 10


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D, padding_idx=PAD)
        self.pos = nn.Parameter(torch.randn(SEQ, D) * 0.02)
        self.self_attn = nn.MultiheadAttention(D, HEADS, dropout=0.1, batch_first=True)
        self.norm1 = nn.LayerNorm(D)
        self.ff = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))
        self.norm2 = nn.LayerNorm(D)
        self.head = nn.Linear(D, 3)

    def forward(self, tokens):
        pad_mask = tokens.eq(PAD)
        x = self.embed(tokens) + self.pos
        attn, _ = self.self_attn(x, x, x, key_padding_mask=pad_mask)  # nandoctor: origin
        x = self.norm1(x + attn)
        x = self.norm2(x + self.ff(x))
        keep = (~pad_mask).unsqueeze(-1).float()
        pooled = (x * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return self.head(pooled)


def build_model():
    return Encoder()


def get_batch(step):
    lengths = torch.randint(3, SEQ + 1, (8,))
    lengths[5] = 0                      # an empty sentence in the batch: all <pad>
    tokens = torch.randint(1, VOCAB, (8, SEQ))
    tokens[torch.arange(SEQ).expand(8, SEQ) >= lengths.unsqueeze(1)] = PAD
    return tokens, torch.randint(0, 3, (8,))
