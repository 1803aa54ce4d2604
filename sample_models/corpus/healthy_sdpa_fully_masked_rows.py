# Source: https://github.com/pytorch/pytorch/issues/103963
# Healthy: a boolean attention mask built from a query-and-key padding mask leaves the padded query rows with no key
# to attend to. Eager softmax over such rows is NaN, but torch's scaled_dot_product_attention returns 0 for a fully
# masked row (and a zero gradient), and the padded positions are dropped before the pooled head. Finite everywhere.
import torch
from torch import nn
import torch.nn.functional as F


class Encoder(nn.Module):
    def __init__(self, vocab=60, dim=32, heads=2, n_classes=3):
        super().__init__()
        self.heads = heads
        self.emb = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, tokens):
        b, n = tokens.shape
        valid = tokens != 0
        x = self.emb(tokens)
        q, k, v = (t.view(b, n, self.heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        mask = (valid[:, :, None] & valid[:, None, :])[:, None]       # padded query rows: all False
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        h = self.out(h.transpose(1, 2).reshape(b, n, -1))
        pooled = (h * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        return self.head(pooled)


def build_model():
    return Encoder()


def get_batch(step):
    tokens = torch.randint(1, 60, (4, 12))
    tokens[1, 6:] = 0
    tokens[3, 9:] = 0
    return tokens, torch.randint(0, 3, (4,))
