"""What a step uses when the model file does not say: the loss, the optimizer, a static scaler."""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..errors import InputError
from . import stats


class StaticScaler:
    """A fixed loss scale (config `loss_scale: <number>`): skips steps whose gradients overflow."""

    def __init__(self, scale: float):
        self.scale_value = scale
        self._found_inf = False

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_value

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.scale_value)
            self._found_inf = not bool(torch.isfinite(stats.foreach_norms(grads, math.inf)).all())

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self._found_inf:
            optimizer.step()

    def update(self) -> None:
        pass

    def get_scale(self) -> float:
        return self.scale_value

    @property
    def skipped_last(self) -> bool:
        return self._found_inf


def default_loss(outputs: Any, targets: Any) -> torch.Tensor:
    """Hugging Face `loss`, else cross-entropy for integer targets, MSE for floating targets."""
    hf_loss = outputs.get("loss") if isinstance(outputs, dict) else getattr(outputs, "loss", None)
    if isinstance(hf_loss, torch.Tensor):
        return hf_loss
    logits = primary_output(outputs)
    if not isinstance(targets, torch.Tensor) or logits is None:
        raise InputError("the model file has no loss_fn(outputs, targets) and nandoctor cannot pick a default: "
                         "the default needs a tensor output (or a `loss` key/attribute) and tensor targets. "
                         "Define loss_fn in the model file.")
    if not targets.is_floating_point():
        if logits.dim() > 2 and targets.dim() == logits.dim() - 1 and logits.shape[:-1] == targets.shape:
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return F.cross_entropy(logits, targets)
    # In float32, as autocast would: a float16 cast of large targets would itself overflow.
    return F.mse_loss(logits.float(), targets.float())


def primary_output(outputs: Any) -> Optional[torch.Tensor]:
    """The logits of a model's output: the tensor itself, `.logits` / ["logits"], or the first element."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    return None


def build_optimizer(params: list[torch.nn.Parameter], spec: dict[str, Any]) -> torch.optim.Optimizer:
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    name = spec.get("name", "adamw")
    if "eps" not in kwargs and name != "sgd" and params and params[0].dtype == torch.float16:
        # eps "auto": the optimizers' default 1e-8 is 0 in float16 and divides 0/0 (see optimizer-eps).
        kwargs["eps"] = 1e-4
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    classes = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD,
               "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}
    cls = classes[spec.get("name", "adamw")]
    try:
        return cls(params, **kwargs)
    except (TypeError, ValueError) as err:   # torch rejects the values: betas out of range, nesterov without momentum
        raise InputError(f"config key 'optimizer': {cls.__name__} does not accept these settings ({err}).") from None
