"""A decoder-only transformer with an explicit -inf causal mask (a registered buffer) and
nn.MultiheadAttention. Deliberate infinities must not be reported: should scan clean."""
import torch
from torch import nn


class TinyLM(nn.Module):
    def __init__(self, vocab=128, d=64, heads=4, layers=2, context=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(context, d))
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(nn.ModuleDict({
                "ln1": nn.LayerNorm(d), "attn": nn.MultiheadAttention(d, heads, batch_first=True, dropout=0.1),
                "ln2": nn.LayerNorm(d), "mlp": nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)),
            }))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        mask = torch.full((context, context), float("-inf")).triu(1)
        self.register_buffer("causal_mask", mask)

    def forward(self, tokens):
        t = tokens.shape[1]
        h = self.embed(tokens) + self.pos[:t]
        for block in self.blocks:
            a = block["ln1"](h)
            h = h + block["attn"](a, a, a, attn_mask=self.causal_mask[:t, :t], need_weights=False)[0]
            h = h + block["mlp"](block["ln2"](h))
        return self.head(self.ln_f(h))


def build_model():
    return TinyLM()


def get_batch(step):
    tokens = torch.randint(0, 128, (8, 33))
    return tokens[:, :-1], tokens[:, 1:]


def build_optimizer(params):
    return torch.optim.AdamW(params, lr=3e-4, weight_decay=0.01, eps=1e-6)  # eps float16 can hold
