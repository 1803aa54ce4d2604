"""A NaN feature row: the model's sigmoid output is NaN and BCELoss's range check raises."""
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
X = torch.randn(512, 8)
y = (X[:, 0] > 0).float()
X[300, 3] = float("nan")
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1), nn.Sigmoid())
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.BCELoss()
for xb, yb in DataLoader(TensorDataset(X, y), batch_size=64):
    pred = model(xb).squeeze(-1)
    loss = loss_fn(pred, yb)
    opt.zero_grad()
    loss.backward()
    opt.step()
