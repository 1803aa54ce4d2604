"""Gradient accumulation: the optimizer steps every 2 micro-batches."""
import torch
from net import Net, batch

torch.manual_seed(0)
model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
accumulate = 2
for micro in range(12):
    x, y = batch(micro // accumulate)      # step 3: micro-batches 6 and 7
    loss = torch.nn.functional.mse_loss(model(x), y) / accumulate
    loss.backward()
    if (micro + 1) % accumulate == 0:
        opt.step()
        opt.zero_grad()
