# Source: https://github.com/nvidia-cosmos/cosmos-rl/pull/155
# Mechanism: supervised fine-tuning masks the prompt tokens with -100. Every 4th batch (steps 3, 7, ...) holds only
# prompts, so every label is ignore_index and cross_entropy(label_smoothing=0.1, reduction="mean") divides a sum
# over zero tokens by zero: NaN at step 3, in the loss, in every precision.
import torch
from torch import nn
import torch.nn.functional as F


class TinyLM(nn.Module):
    def __init__(self, vocab=40, dim=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, vocab))

    def forward(self, tokens):
        return self.mlp(self.emb(tokens))


def build_model():
    return TinyLM()


def get_batch(step):
    tokens = torch.randint(0, 40, (4, 12))
    labels = tokens.roll(-1, dims=1).clone()
    prompt_len = 12 if step % 4 == 3 else 5   # a prompt-only packed batch every 4th step
    labels[:, :prompt_len] = -100
    return tokens, labels


def loss_fn(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,  # nandoctor: origin
                           label_smoothing=0.1)
