# Source: https://github.com/pytorch/pytorch/issues/4867
# Healthy: nn.BCELoss on sigmoid outputs that saturate to exactly 0.0 and 1.0 (logits of +-40). BCELoss clamps each
# log at -100 and its backward divides by max(p(1-p), 1e-12): the loss is large but finite, the gradients finite.
import torch
from torch import nn


class Scorer(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
        with torch.no_grad():
            self.body[2].bias.fill_(0.0)

    def forward(self, x):
        logits = self.body(x).squeeze(1)
        logits = torch.cat([logits, torch.tensor([40.0, -40.0])])   # two saturated scores (a cached teacher's)
        return torch.sigmoid(logits)


def build_model():
    return Scorer()


def get_batch(step):
    x = torch.randn(16, 16)
    y = (x[:, 0] > 0).float()
    return x, torch.cat([y, torch.tensor([0.0, 1.0])])             # the saturated ones are wrong


def loss_fn(p, y):
    return nn.BCELoss()(p, y)
