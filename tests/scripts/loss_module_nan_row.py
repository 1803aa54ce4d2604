"""A NaN in sample 21 (the third batch), the loss taken by an nn.CrossEntropyLoss module:
`nandoctor run --on-nonfinite skip` names the sample from the module again with reduction="none"
(tests/test_policies.py)."""
import torch
g = torch.Generator().manual_seed(0)
x, y = torch.randn(96, 4, generator=g), torch.randint(0, 3, (96,), generator=g)
x[21, 1] = float("nan")
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
criterion = torch.nn.CrossEntropyLoss()
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
for xb, yb in loader:
    loss = criterion(model(xb), yb)
    loss.backward(); opt.step(); opt.zero_grad()
print("loss", loss.item())
