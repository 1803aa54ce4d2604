# Source: https://github.com/ASUS-AICS/LibMultiLabel-Old-Archive/pull/164
# Healthy: an Embedding with padding_idx feeding a packed GRU over variable-length batches, lengths clamped to at least 1.
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


class Classifier(nn.Module):
    def __init__(self, vocab=40, d=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, d, padding_idx=0)
        self.gru = nn.GRU(d, 24, batch_first=True)
        self.head = nn.Linear(24, 3)

    def forward(self, tokens, lengths):
        packed = pack_padded_sequence(self.embed(tokens), lengths.clamp(min=1), batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return self.head(h[-1])


def build_model():
    return Classifier()


def get_batch(step):
    lengths = torch.randint(0, 13, (8,))
    tokens = torch.randint(1, 40, (8, 12)).masked_fill(torch.arange(12)[None, :] >= lengths[:, None], 0)
    return (tokens, lengths), torch.randint(0, 3, (8,))
