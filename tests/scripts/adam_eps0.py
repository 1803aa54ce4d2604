"""Adam with eps=0 on an embedding whose rows 5..9 no batch uses: their gradient is exactly 0, so
exp_avg / (sqrt(exp_avg_sq) + eps) is 0/0 = NaN at the first update. The NaN is born inside
optimizer.step(), so the crash bundle holds the state after that step."""
import argparse

import torch
import torch.nn as nn

parser = argparse.ArgumentParser()
parser.add_argument("--eps", type=float, default=1e-8)
args = parser.parse_args()
torch.manual_seed(0)
model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=args.eps)
for step in range(5):
    tokens = torch.randint(0, 5, (8, 3))
    loss = model(tokens).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print("final loss", loss.item())
