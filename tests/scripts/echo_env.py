"""Healthy: prints what a script sees of its process, trains a few steps, exits with --code."""
import os
import sys

import torch

print(f"name={__name__} argv={sys.argv[1:]} path0={os.path.basename(sys.path[0])}")
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for _ in range(5):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"final loss {loss.item():.4f}")
code = int(sys.argv[sys.argv.index("--code") + 1]) if "--code" in sys.argv else 0
sys.exit(code)
