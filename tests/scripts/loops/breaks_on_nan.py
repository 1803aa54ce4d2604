"""A loop with its own NaN check: it leaves the loop before the optimizer step of a non-finite
loss, and the script then runs to its end."""
import torch
from net import Net, batch

torch.manual_seed(0)
model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(6):
    x, y = batch(step)
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    if not torch.isfinite(loss):
        print(f"loss is {loss.item()} at step {step}: stopping")
        break
    opt.step()
print("done")
