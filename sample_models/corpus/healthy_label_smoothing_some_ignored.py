# Source: https://github.com/pytorch/pytorch/issues/73205
# Healthy: cross_entropy with label_smoothing and ignore_index over token batches in which many (never all) labels
# are -100. The smoothing term and the mean both count only the kept tokens; nothing divides by zero.
import torch
from torch import nn
import torch.nn.functional as F


class Tagger(nn.Module):
    def __init__(self, vocab=40, dim=32, tags=7):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, tags)

    def forward(self, tokens):
        return self.out(self.rnn(self.emb(tokens))[0])


def build_model():
    return Tagger()


def get_batch(step):
    tokens = torch.randint(0, 40, (4, 10))
    tags = torch.randint(0, 7, (4, 10))
    tags[:, ::2] = -100                      # sub-word continuations are not scored
    tags[2:, 5:] = -100                      # padding
    return tokens, tags


def loss_fn(logits, tags):
    return F.cross_entropy(logits.flatten(0, 1).float(), tags.flatten(), ignore_index=-100, label_smoothing=0.2)
