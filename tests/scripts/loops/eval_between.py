"""An evaluation under torch.no_grad() (model.eval()) after every training step."""
import torch
from net import Net, batch

torch.manual_seed(0)
model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
held_out = torch.randn(4, 4)
for step in range(6):
    model.train()
    x, y = batch(step)
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        model(held_out)
