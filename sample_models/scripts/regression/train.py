"""Mirrors pytorch/examples regression/main.py (commit 77f55b9): one nn.Linear fitted to a random
degree-4 polynomial on fresh batches, smooth_l1_loss, and no optimizer object at all: each
parameter is updated by hand with `param.data.add_(-0.1 * param.grad)` inside an endless batch
counter that stops once the loss is under 1e-3. Seeded here, so the batch count is fixed.

Healthy: nothing injected. A run whose every update is hand-written must still pass.
"""
import itertools

import torch
import torch.nn.functional as F

DEGREE = 4
torch.manual_seed(3)
true_weights = 5 * torch.randn(DEGREE, 1)
true_bias = 5 * torch.randn(1)


def powers(x):
    """Columns x, x**2, ..., x**DEGREE."""
    return torch.stack([x.pow(k) for k in range(1, DEGREE + 1)], dim=1)


def sample(n=32):
    x = powers(torch.randn(n))
    return x, x @ true_weights + true_bias


def describe(weights, bias):
    terms = " ".join(f"{w:+.2f} x^{k}" for k, w in enumerate(weights.tolist(), start=1))
    return f"y = {terms} {bias.item():+.2f}"


model = torch.nn.Linear(DEGREE, 1)
for n_batches in itertools.count(1):
    inputs, targets = sample()
    model.zero_grad()
    loss = F.smooth_l1_loss(model(inputs), targets)
    loss.backward()
    for param in model.parameters():
        param.data.add_(-0.1 * param.grad)
    if loss.item() < 1e-3:
        break

print(f"Loss: {loss.item():.6f} after {n_batches} batches")
print("==> Learned function:\t" + describe(model.weight.view(-1), model.bias))
print("==> Actual function:\t" + describe(true_weights.view(-1), true_bias))
