"""A nandoctor model file. `nandoctor scan model.py` imports it and calls these functions.

Required: build_model() and get_batch(step).
Optional: loss_fn(outputs, targets), build_optimizer(params), build_scheduler(optimizer) and
training_step(model, batch). The last two are written below as comments: remove the `# ` in
front of one to use it.

This file is imported, not run: keep your training loop and argparse out of it (or under
`if __name__ == "__main__":`). To run a whole training script as it is, use
`nandoctor run train.py ARGS` instead.
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
    With training_step defined, the value is passed to it as it is, in any structure.
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


# Optional: the learning-rate schedule your run uses (here a linear warm-up over 10 steps).
# nandoctor steps it after every optimizer step, so a warm-up that overshoots or a schedule
# that computes a NaN learning rate shows up as `high-lr`, naming the schedule's line.
# def build_scheduler(optimizer):
#     return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))


# Optional: your own step, returning the loss your loop calls backward() on. When defined, it
# receives get_batch(step)'s value as it is, in place of model(inputs) + loss_fn; the loss is
# then part of the forward phase and the label-range check is skipped. `nandoctor replay
# --model model.py` also uses it to re-run a crash bundle from your own loop.
# def training_step(model, batch) -> torch.Tensor:
#     inputs, targets = batch
#     return nn.functional.cross_entropy(model(inputs), targets)
