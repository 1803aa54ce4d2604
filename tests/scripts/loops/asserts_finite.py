"""A loop that checks the model's output itself and raises before any loss is computed."""
import torch
from net import Net, batch

torch.manual_seed(0)
model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(6):
    x, y = batch(step)
    out = model(x)
    if not torch.isfinite(out).all():
        raise FloatingPointError(f"non-finite output at step {step}")
    loss = torch.nn.functional.mse_loss(out, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
