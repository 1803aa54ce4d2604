"""A classifier with sharpened logits and a hand-written negative log-likelihood."""
import torch
from torch import nn
import torch.nn.functional as F


class SharpClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(32, 64), nn.ReLU())
        self.head = nn.Linear(64, 20)
        self.sharpness = 40.0

    def forward(self, x):
        return self.head(self.encoder(x)) * self.sharpness


def build_model():
    return SharpClassifier()


def get_batch(step):
    x = torch.randn(64, 32) * 2
    return x, torch.randint(0, 20, (64,))


def loss_fn(logits, labels):
    log_probs = torch.log(torch.softmax(logits, dim=-1))
    return F.nll_loss(log_probs, labels)
