"""A NaN with no module call for the guard to see (a bare Parameter): the end-of-run check still
fails it; a non-finite run never passes."""
import torch
w = torch.nn.Parameter(torch.ones(3))
opt = torch.optim.SGD([w], lr=1.0)
for _ in range(3):
    loss = (w * float("nan")).sum()
    loss.backward()
    opt.step(); opt.zero_grad()
print("done")
