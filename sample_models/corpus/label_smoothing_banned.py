# Source: https://github.com/candle-org/MindAct/pull/1633
# Mechanism: banned classes are set to -inf by index assignment; cross_entropy with label_smoothing sums log-probs over every class, so the -inf entries make the loss inf.
import torch
from torch import nn

BANNED = [3, 7]


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(12, 10)

    def forward(self, x):
        logits = self.net(x)
        logits[:, BANNED] = float("-inf")         # tags not allowed by the schema
        return logits


def build_model():
    return Tagger()


def get_batch(step):
    y = torch.randint(0, 10, (24,))
    y = torch.where((y == 3) | (y == 7), y + 1, y)
    return torch.randn(24, 12), y


def loss_fn(logits, y):
    return nn.functional.cross_entropy(logits, y, label_smoothing=0.1)  # nandoctor: origin
