"""A tiny causal Transformer trained at a learning rate far too high (AdamW, lr 0.5, no warm-up,
no qk-norm). Its attention logits grow step after step until, stored in float16 as a fused
half-precision attention kernel stores them, a score passes 65504, becomes inf and the softmax
returns NaN (Wortsman et al. 2023: attention-logit growth in small models at high lr).

    python tiny_transformer_high_lr.py [--steps N] [--lr LR]
"""
import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, DIM, HEADS, LENGTH, BATCH = 32, 32, 2, 16, 8


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)
        self.register_buffer("causal", torch.ones(LENGTH, LENGTH, dtype=torch.bool).triu(1), persistent=False)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t.view(b, n, HEADS, DIM // HEADS).transpose(1, 2) for t in self.qkv(x).split(DIM, dim=-1))
        scores = (q * (DIM // HEADS) ** -0.5) @ k.transpose(-2, -1)
        scores = scores.half().float()          # the scores as a float16 attention kernel holds them
        weights = scores.masked_fill(self.causal[:n, :n], -math.inf).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, DIM))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(DIM), Attention()
        self.ln2, self.mlp = nn.LayerNorm(DIM), nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Parameter(torch.zeros(LENGTH, DIM))
        self.blocks = nn.Sequential(Block(), Block())
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, idx):
        return self.head(self.norm(self.blocks(self.embed(idx) + self.pos[: idx.shape[1]])))


def build_model(seed: int = 0) -> TinyGPT:
    torch.manual_seed(seed)
    return TinyGPT()


def batches(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randint(0, VOCAB, (BATCH, LENGTH + 1), generator=generator)
        yield idx[:, :-1], idx[:, 1:]


def loss_of(model, x, y):
    return F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=0.5)
    args = parser.parse_args()
    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    data = batches()
    for step in range(args.steps):
        x, y = next(data)
        loss = loss_of(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            print(f"step {step} loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
