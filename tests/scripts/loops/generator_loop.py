"""Batches from a plain Python generator, advanced with next()."""
import torch
from net import Net, batch


def batches():
    step = 0
    while True:
        yield batch(step)
        step += 1


torch.manual_seed(0)
model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
stream = batches()
for _ in range(6):
    x, y = next(stream)
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
