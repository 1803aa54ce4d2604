# Source: https://github.com/pytorch/pytorch/issues/31557
# Mechanism: CTC with zero_infinity=False; a target with repeated labels needs more frames than the input has, so no alignment exists and the loss is inf.
import torch
from torch import nn


class Recognizer(nn.Module):
    def __init__(self, feats=10, classes=6):
        super().__init__()
        self.rnn = nn.GRU(feats, 16)
        self.out = nn.Linear(16, classes)

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.out(h).log_softmax(dim=-1)


def build_model():
    return Recognizer()


def get_batch(step):
    T, N = 8, 4
    x = torch.randn(T, N, 10)
    targets = torch.randint(1, 6, (N, 5))
    target_lengths = torch.full((N,), 5, dtype=torch.long)
    if step == 2:
        targets[1] = torch.tensor([2, 2, 2, 2, 2])   # 'aaaaa' needs 9 frames with blanks between repeats
    input_lengths = torch.full((N,), T, dtype=torch.long)
    return x, (targets, input_lengths, target_lengths)


def loss_fn(log_probs, targets):
    labels, input_lengths, target_lengths = targets
    return nn.functional.ctc_loss(log_probs, labels, input_lengths, target_lengths)  # nandoctor: origin
