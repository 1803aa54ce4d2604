"""Per-sample gradients (DP-SGD style) with torch.func.vmap(grad(...)), written into .grad by
hand; the sqrt of a shifted target goes NaN at step 2 (tests/test_compat.py)."""
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)


def loss_fn(params, x, y):
    out = functional_call(model, params, (x.unsqueeze(0),))
    return (out.squeeze() - y) ** 2 * torch.sqrt(y + 4.0)


for step in range(5):
    x, y = torch.randn(8, 4), torch.randn(8)
    if step == 2:
        y[1] = -6.0
    params = {k: v.detach() for k, v in model.named_parameters()}
    per_sample = vmap(grad(loss_fn), in_dims=(None, 0, 0))(params, x, y)
    for name, p in model.named_parameters():
        p.grad = per_sample[name].clamp(-1, 1).mean(0)
    opt.step()
    opt.zero_grad()
print("done")
