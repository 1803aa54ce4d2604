"""The step lives in a helper function of another module (train_helpers.py)."""
import torch
from net import Net, batch
from train_helpers import train_step

torch.manual_seed(0)
model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(6):
    train_step(model, opt, *batch(step))
