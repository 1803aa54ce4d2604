"""A NaN in the input the loop hands its model (no DataLoader): the model's own forward splits it
into time steps, so the first op that reads the NaN runs at a line of this file, inside the
model; the value entered the step at the model call."""
import torch
import torch.nn as nn


class Steps(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.Linear(1, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        outputs = []
        for x_t in x.split(1, dim=1):
            outputs.append(self.head(torch.tanh(self.cell(x_t))))
        return torch.cat(outputs, dim=1)


torch.manual_seed(0)
waves = torch.randn(8, 5)
waves[3, 2] = float("nan")
model = Steps()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(3):
    loss = (model(waves) - 1).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print("final loss", loss.item())
