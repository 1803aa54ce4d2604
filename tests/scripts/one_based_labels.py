"""Class labels numbered 1..3 for a 3-class model (a dataset exported with 1-based ids): the
first batch holding label 3 makes cross_entropy raise IndexError "Target 3 is out of bounds"
on the CPU (a device-side assert on CUDA)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
model = nn.Linear(4, 3)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(5):
    x = torch.randn(8, 4)
    labels = torch.randint(1, 4, (8,))
    loss = F.cross_entropy(model(x), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print("final loss", loss.item())
