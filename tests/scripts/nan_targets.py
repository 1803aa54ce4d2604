"""Regression targets with one NaN row, fed by a DataLoader to a functional loss."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
X = torch.randn(512, 8)
y = X.sum(1, keepdim=True)
y[200] = float("nan")
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=1e-2)
for xb, yb in DataLoader(TensorDataset(X, y), batch_size=64):
    loss = F.mse_loss(model(xb), yb)
    opt.zero_grad()
    loss.backward()
    opt.step()
print("done", loss.item())
