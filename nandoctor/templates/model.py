"""A nandoctor model file. `nandoctor scan model.py` imports it and calls these functions.

Required: build_model() and get_batch(step). Optional: loss_fn(outputs, targets) and
build_optimizer(params) (else the config's `optimizer` is used).
"""
import torch
from torch import nn


def build_model() -> nn.Module:
    """Return a fresh model. Called once per precision under the same seed."""
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))


def get_batch(step: int):
    """Return (inputs, targets) for training step `step`.

    inputs: a Tensor (model(x)), a tuple/list (model(*x)) or a dict (model(**x)).
    targets: anything loss_fn understands. Replace the random data with a slice of your
    real data: NaN in the data is one of the most common causes nandoctor finds.
    """
    x = torch.randn(32, 16)
    return x, x[:, :4].argmax(dim=1)


def loss_fn(outputs, targets) -> torch.Tensor:
    """Optional. Without it: a `loss` attribute/key of the outputs, else cross-entropy for
    integer targets and MSE for floating targets."""
    return nn.functional.cross_entropy(outputs, targets)


def build_optimizer(params):
    """Optional. Without it, the config's `optimizer` section builds one."""
    return torch.optim.AdamW(params, lr=1e-3)
