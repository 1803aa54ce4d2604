"""A training script with its own bf16 autocast; the log of a shifted input goes NaN at step 2
(tests/test_compat.py)."""
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x):
        return torch.log(self.body(x).float() + x[:, :1] + 3.0)


torch.manual_seed(0)
model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(4):
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    if step == 2:
        x[5, 0] = -50.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = (model(x) - y).pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
