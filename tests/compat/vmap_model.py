"""A model file whose training_step maps the model over samples with torch.func.vmap; the
sqrt of a shifted target goes NaN at step 3 (tests/test_compat.py)."""
import torch
from torch import nn
from torch.func import functional_call, vmap


def build_model():
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def get_batch(step):
    x, y = torch.randn(16, 4), torch.randn(16)
    if step == 3:
        y[2] = -5.0
    return x, y


def training_step(model, batch):
    x, y = batch
    params = dict(model.named_parameters())

    def per_sample(xi, yi):
        out = functional_call(model, params, (xi.unsqueeze(0),)).squeeze()
        return (out - yi) ** 2 * torch.sqrt(yi + 4.0)
    return vmap(per_sample)(x, y).mean()
