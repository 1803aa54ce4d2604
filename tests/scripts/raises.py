"""The user's own code raises (no NaN anywhere): a finding at their line."""
import torch

model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(10):
    loss = model(torch.randn(8, 4)).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step == 3:
        raise ValueError("the learning-rate table has no entry for step 3")
