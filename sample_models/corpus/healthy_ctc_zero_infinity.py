# Source: https://github.com/wenet-e2e/wenet/pull/2299
# Healthy: CTC with zero_infinity=True; a batch item that cannot be aligned contributes 0 loss and 0 gradient instead of inf.
import torch
from torch import nn


class Recognizer(nn.Module):
    def __init__(self, feats=10, classes=6):
        super().__init__()
        self.proj = nn.Linear(feats, 16)
        self.out = nn.Linear(16, classes)

    def forward(self, x):
        return self.out(torch.tanh(self.proj(x))).log_softmax(dim=-1)


def build_model():
    return Recognizer()


def get_batch(step):
    T, N = 8, 4
    x = torch.randn(T, N, 10)
    targets = torch.randint(1, 6, (N, 5))
    targets[1] = torch.tensor([2, 2, 2, 2, 2])     # unalignable in 8 frames
    return x, (targets, torch.full((N,), T, dtype=torch.long), torch.full((N,), 5, dtype=torch.long))


def loss_fn(log_probs, targets):
    labels, input_lengths, target_lengths = targets
    return nn.functional.ctc_loss(log_probs, labels, input_lengths, target_lengths, zero_infinity=True)
