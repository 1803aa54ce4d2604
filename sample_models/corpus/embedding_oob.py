# Source: https://github.com/ajhalthor/Transformer-Neural-Network/issues/13
# Mechanism: the tokenizer's vocabulary grew but nn.Embedding kept the old size; a rare token id >= num_embeddings raises IndexError in forward.
import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self, vocab=500, d=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.head = nn.Linear(d, 2)

    def forward(self, tokens):
        h = self.embed(tokens)  # nandoctor: origin
        return self.head(h.mean(dim=1))


def build_model():
    return Encoder()


def get_batch(step):
    tokens = torch.randint(0, 500, (8, 10))
    if step == 3:
        tokens[2, 4] = 512        # a token added to the tokenizer after the model was built
    return tokens, torch.randint(0, 2, (8,))
