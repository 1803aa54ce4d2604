"""optimizer.step(closure), as LBFGS needs."""
import torch
from net import Net, batch

torch.manual_seed(0)
model = Net()
opt = torch.optim.LBFGS(model.parameters(), lr=0.01, max_iter=2)
for step in range(6):
    x, y = batch(step)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
