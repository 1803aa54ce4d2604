"""When an optimizer step provably cannot turn finite weights non-finite.

The guard checks the weights after every update (`Watch._note_parameters`): reading every weight
once more is, with the gradients' norm, most of its per-step cost on a small model (a 3-layer MLP:
~0.1 ms of an 8-9 ms step). For the optimizers below, a step whose gradients are finite and
bounded, from weights that are finite and bounded, with finite hyperparameters in their usual
ranges, yields finite weights: every term of the update is a bounded product or quotient of
finite values (Adam's m / (sqrt(v) + eps) with eps > 0 and beta1^2 < beta2 is at most ~30 in
size; SGD's momentum buffer is at most |g| / (1 - momentum)). There, the guard reads the weights
every RECHECK_EVERY steps instead of every step, and on every step where any premise fails.

What the premises rule out are exactly the ways finite gradients make non-finite weights: an eps of
0 (0 / 0 where a gradient is exactly 0), an lr of inf or 1e30, a weight decay with lr * wd > 1
(AdamW's and SGD's multiply the weights by about 1 - lr * wd), a beta2 of 1 (Adam's bias correction
divides by 0), centered RMSprop (sqrt of a variance that rounds below 0), half-precision weights
(eps underflows, updates overflow), a subclass or another optimizer whose step we do not know. A
weight written by the user's own code between steps was never covered by this check (it runs right
after optimizer.step()); the next step's loss and gradients, and the periodic check, see it.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

# The weights are read at least this often, whatever the premises say.
RECHECK_EVERY = 16
# Bounds under which no update below can reach float32's 3.4e38 within RECHECK_EVERY steps.
MAX_LR = 1e4
MIN_EPS = 1e-30
MAX_GRAD_NORM = 1e18
MAX_WEIGHT_NORM = 1e18
WEIGHT_DTYPES = (torch.float32, torch.float64)


def _within(value: Any, low: float, high: float) -> bool:
    # A tensor lr or a bool is not a plain hyperparameter: no claim is made about it.
    return type(value) in (float, int) and low <= value <= high


def _sgd(group: dict[str, Any]) -> bool:
    return _within(group.get("momentum", 0.0), 0.0, 1.0) and _within(group.get("dampening", 0.0), 0.0, 1.0)


def _adam(group: dict[str, Any]) -> bool:
    betas = group.get("betas")
    if not isinstance(betas, tuple) or len(betas) != 2:
        return False
    beta1, beta2 = betas
    # beta1^2 < beta2 bounds |m| / sqrt(v); beta2 < 1 keeps the bias correction's 1 - beta2^t above 0.
    return (_within(beta1, 0.0, 1.0) and _within(beta2, 0.0, 1.0) and beta1 < 1.0 and beta2 < 1.0
            and beta1 * beta1 < beta2 and _within(group.get("eps"), MIN_EPS, 1.0))


def _rmsprop(group: dict[str, Any]) -> bool:
    return (not group.get("centered", False) and _within(group.get("alpha"), 0.0, 1.0) and group["alpha"] < 1.0
            and _within(group.get("eps"), MIN_EPS, 1.0) and _within(group.get("momentum", 0.0), 0.0, 1.0))


def _adagrad(group: dict[str, Any]) -> bool:
    return (_within(group.get("eps"), MIN_EPS, 1.0) and _within(group.get("lr_decay", 0.0), 0.0, 1e6)
            and _within(group.get("initial_accumulator_value", 0.0), 0.0, 1e6))


# Exact classes: a subclass may change step().
_GROUP_PREMISES = {torch.optim.SGD: _sgd, torch.optim.Adam: _adam, torch.optim.AdamW: _adam,
                   torch.optim.RMSprop: _rmsprop, torch.optim.Adagrad: _adagrad}


def keeps_weights_finite(optimizer: Any, grad_norm: Optional[float], weight_norm: Optional[float]) -> bool:
    """True when this step's update cannot make finite weights non-finite: a known optimizer with
    hyperparameters in range, this step's gradient norm (the guard's host value) finite and
    bounded, and the weights' norm at their last check bounded. The weights' dtypes are the
    caller's to check (`dtypes_covered`): reading them every step costs what it saves."""
    premises = _GROUP_PREMISES.get(type(optimizer))
    if premises is None or grad_norm is None or weight_norm is None:
        return False
    if not (math.isfinite(grad_norm) and grad_norm <= MAX_GRAD_NORM and math.isfinite(weight_norm)
            and weight_norm <= MAX_WEIGHT_NORM):
        return False
    for group in optimizer.param_groups:
        lr = group.get("lr")
        if not _within(lr, 0.0, MAX_LR) or not _within(group.get("weight_decay", 0.0), 0.0, 1e6):
            return False
        if type(optimizer) in (torch.optim.AdamW, torch.optim.SGD) and lr * group.get("weight_decay", 0.0) > 1.0:
            # AdamW's decoupled decay multiplies the weights by 1 - lr * wd, and SGD's (wd * w in
            # the gradient, unnormalised) by about as much: past 1, |1 - lr * wd| can grow them
            # geometrically (lr 10, wd 1e3: 1e17 -> inf in 6 updates). Keep it in [0, 1].
            return False
        if group.get("differentiable", False) or not premises(group):
            return False
    return True


def dtypes_covered(params: list[torch.Tensor]) -> bool:
    """The weights are float32 or float64 (half-precision weights overflow and underflow inside
    the update itself)."""
    return all(p.dtype in WEIGHT_DTYPES for p in params)
