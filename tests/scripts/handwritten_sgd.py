"""No torch optimizer: the update is written by hand (pytorch/examples word_language_model style).
A large step drives the variance negative, and sqrt of it is NaN."""
import argparse

import torch
import torch.nn as nn

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.01)
args = parser.parse_args()
torch.manual_seed(0)


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.var = nn.Parameter(torch.ones(4))
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        return self.proj(x) / torch.sqrt(self.var)


model = Scale()
for step in range(50):
    x = torch.randn(16, 4)
    loss = (model(x) - x).pow(2).mean() + 0.5 * model.var.sum()     # a prior that pulls var down
    model.zero_grad()
    loss.backward()
    for p in model.parameters():
        p.data.add_(p.grad, alpha=-args.lr)
print("trained")
