"""Run as a module: `python -m pkg.train`."""
import sys

import torch

print(f"module name={__name__} argv={sys.argv[1:]}")
model = torch.nn.Linear(4, 4)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(3):
    out = model(torch.randn(2, 4))
    loss = torch.log(out.abs() - out.abs()).mean()     # log(0): -inf
    opt.zero_grad()
    loss.backward()
    opt.step()
