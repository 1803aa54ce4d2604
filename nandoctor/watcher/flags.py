"""The per-step flag vector of the watch: one small tensor per optimizer step, reduced on the
device and moved to the host in one transfer. Its own module because both the single-process
guard and the rank-aware layer (which all-reduces it across ranks) read its layout."""
from __future__ import annotations

import math

# Slots, in order. *_bad slots are 0/1 and come first (a fold of several steps takes their
# maximum); the rest are values.
# listed_bad: the step's batch holds a sample an earlier run's skip list names (any rank's: all skip).
FLAGS = ("batch_bad", "loss_bad", "grads_bad", "params_bad", "local_grads_bad", "listed_bad", "loss", "grad_norm",
         "scale",
         # the previous step's: total parameter norm after it, and |update| / |weights| (statistics steps)
         "param_norm", "update_ratio")
SLOT = {name: i for i, name in enumerate(FLAGS)}
BAD_SLOTS = sum(1 for name in FLAGS if name.endswith("_bad"))

# What the device computes per step (`Watch._witnesses`): one witness per *_bad slot, a float64
# scalar that is non-finite exactly when that check fails (a float64 sum of the batch, the sum of
# the losses, the gradients' total norm, ...), then the values that are not already witnesses.
# Judging "finite?" on the host from the witnesses themselves saves the per-slot isfinite, not
# and cast kernels; the loss's mean and the gradient norm are read off the witnesses.
WITNESSES = BAD_SLOTS
RAW = ("batch", "loss_sum", "grad_norm", "params", "local_grads", "listed", "scale", "param_norm", "update_ratio")


def host_flags(raw: list[float], losses: int, has_grads: bool) -> list[float]:
    """The FLAGS layout from a transferred witness vector (RAW layout)."""
    bad = [0.0 if math.isfinite(v) else 1.0 for v in raw[:WITNESSES]]
    loss = raw[1] / losses if losses else math.nan
    grad_norm = raw[2] if has_grads else math.nan
    return bad + [loss, grad_norm, *raw[WITNESSES:]]


def device_flags(raw, losses: int, has_grads: bool):
    """The FLAGS layout on the device (for a flag hook that exchanges it across ranks, and for
    the fold of unchecked steps)."""
    import torch
    bad = (~torch.isfinite(raw[:WITNESSES])).to(raw.dtype)
    nan = torch.full((1,), math.nan, dtype=raw.dtype, device=raw.device)
    loss = raw[1:2] / losses if losses else nan
    grad_norm = raw[2:3] if has_grads else nan
    return torch.cat([bad, loss, grad_norm, raw[WITNESSES:]])
