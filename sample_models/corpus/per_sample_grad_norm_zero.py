# Source: https://github.com/jax-ml/jax/issues/9159
# Mechanism: per-sample gradients from torch.func (vmap over grad) weight each sample's loss by
# max_norm / ||g_i|| (DP-SGD-style clipping without the min(1, .)). A padding sample (zero features, zero target)
# through a bias-free model has an exactly zero per-sample gradient: the weight is max_norm / 0 = inf, and
# inf * its zero loss = NaN in the first step's loss. Every precision.
import torch
from torch import nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

MAX_NORM = 1.0


def build_model():
    return nn.Sequential(nn.Linear(8, 16, bias=False), nn.Tanh(), nn.Linear(16, 1, bias=False))


def get_batch(step):
    x = torch.randn(6, 8)
    y = x[:, :1] - 0.5 * x[:, 1:2]
    x[-1] = 0.0                                   # a padding sample at the end of the batch
    y[-1] = 0.0
    return x, y


def training_step(model, batch):
    x, y = batch
    params = {name: p.detach() for name, p in model.named_parameters()}

    def sample_loss(p, xi, yi):
        return F.mse_loss(functional_call(model, p, (xi[None],)), yi[None])

    grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
    weights = MAX_NORM / norms  # nandoctor: origin
    losses = (model(x) - y).pow(2).mean(1)
    return (weights * losses).mean()
