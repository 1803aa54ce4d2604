"""Per-step, per-module statistics on the normal (cheap) path.

Forward hooks reduce each module's output to one row on the device; a tensor hook on that
output reduces its gradient the same way during backward; parameters are reduced with fused
foreach kernels. Rows stay on the device until `finish_step`, which moves the whole step to
the host in one transfer. No tensor is kept alive past its own hook: memory grows with the
number of modules, not with activations.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Optional

import torch

from . import stats


# Every memory pass over an activation costs about as much as a small layer on CPU: the
# norm and zero-count passes run every ZERO_EVERY steps; the aminmax pass runs every step.
ZERO_EVERY = 4


@dataclass
class StepStats:
    """Host-side numbers of one step. Activation/gradient rows are ROW plus the element count."""
    loss: float
    act: dict[int, list[float]] = field(default_factory=dict)      # module index -> ROW
    grad: dict[int, list[float]] = field(default_factory=dict)     # module index -> ROW (unscaled)
    param_grad_norm: list[Optional[float]] = field(default_factory=list)
    param_grad_max: list[Optional[float]] = field(default_factory=list)
    param_grad_zeros: list[Optional[float]] = field(default_factory=list)
    param_norm: list[float] = field(default_factory=list)
    param_norm_before: list[float] = field(default_factory=list)
    update_norm: list[float] = field(default_factory=list)
    total_grad_norm: float = math.nan
    grad_scale: float = 1.0


class Recorder:
    """Attach to a model for the duration of a run; `detach()` in a `finally:`."""

    def __init__(self, model: torch.nn.Module):
        self._steps_seen = 0
        self._prev: Optional[list[torch.Tensor]] = None      # parameters before the step, reused buffers
        self.modules = list(model.named_modules())
        self.params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self._handles: list[Any] = []
        self._reset()

    # ---- lifecycle --------------------------------------------------------------------------
    def attach(self) -> "Recorder":
        for index, (_, module) in enumerate(self.modules):
            self._handles.append(module.register_forward_hook(partial(self._on_forward, index)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def _full(self) -> bool:
        """Norms and zero shares are sampled every ZERO_EVERY steps (first step included);
        min/max (max|x|, NaN/Inf presence, headroom) are taken on every step."""
        return self._steps_seen % ZERO_EVERY == 0

    def _reset(self) -> None:
        self._act_rows: list[torch.Tensor] = []
        self._act_owner: list[int] = []
        self._act_numel: list[int] = []
        self._grad_rows: list[torch.Tensor] = []
        self._grad_owner: list[int] = []
        self._grad_numel: list[int] = []
        # Containers (Sequential, a block returning its last child's output) see the very
        # tensor their child just saw: reuse the child's row and gradient hook instead of
        # reducing the same tensor again.
        self._last_output: Optional[weakref.ref] = None
        self._last_row: Optional[torch.Tensor] = None
        self._grad_watch: dict[int, tuple[weakref.ref, list[int]]] = {}
        self._param_tensors: dict[str, torch.Tensor] = {}

    # ---- hooks ------------------------------------------------------------------------------
    def _on_forward(self, index: int, module: torch.nn.Module, args: Any, output: Any) -> None:
        tensors = stats.floating_tensors(output)
        if not tensors:
            return
        last = self._last_output() if self._last_output is not None else None
        if len(tensors) == 1 and last is tensors[0] and self._last_row is not None:
            row = self._last_row
        else:
            row = stats.combined_row(tensors, self._full)
            self._last_output = weakref.ref(tensors[0]) if len(tensors) == 1 else None
            self._last_row = row
        self._act_rows.append(row)
        self._act_owner.append(index)
        self._act_numel.append(sum(t.numel() for t in tensors))
        if not torch.is_grad_enabled():
            return
        target = next((t for t in tensors if t.requires_grad), None)
        if target is None:
            return
        watched = self._grad_watch.get(id(target))
        if watched is not None and watched[0]() is target:
            watched[1].append(index)
            return
        owners = [index]
        self._grad_watch[id(target)] = (weakref.ref(target), owners)
        target.register_hook(partial(self._on_grad, owners))

    def _on_grad(self, owners: list[int], grad: torch.Tensor) -> None:
        row = stats.tensor_row(grad, self._full)
        for index in owners:
            self._grad_rows.append(row)
            self._grad_owner.append(index)
            self._grad_numel.append(grad.numel())

    # ---- parameters -------------------------------------------------------------------------
    def after_backward(self) -> None:
        """Reduce parameter gradients (call after GradScaler.unscale_, before clipping)."""
        present = [(i, p.grad) for i, (_, p) in enumerate(self.params) if p.grad is not None]
        self._grad_present = [i for i, _ in present]
        grads = [g for _, g in present]
        self._param_tensors["grad_norm"] = stats.foreach_norms(grads, 2.0)
        self._param_tensors["grad_max"] = stats.foreach_norms(grads, math.inf)
        # Zero shares feed only the underflow rule: sampled every ZERO_EVERY steps to keep the
        # per-parameter kernel count down on models with thousands of parameters.
        if self._full:
            self._param_tensors["grad_zeros"] = stats.zero_counts(grads)

    def before_optimizer_step(self) -> None:
        params = [p.detach() for _, p in self.params]
        if not params:
            return
        if self._prev is None or len(self._prev) != len(params):
            self._prev = [torch.empty_like(p) for p in params]
        torch._foreach_copy_(self._prev, params)
        # The norm before this step is the norm after the last one: measure it only once.
        last = getattr(self, "_last_norm", None)
        self._param_tensors["norm_before"] = last if last is not None else stats.foreach_norms(self._prev, 2.0)

    def after_optimizer_step(self) -> None:
        params = [p.detach() for _, p in self.params]
        if not params or self._prev is None:
            return
        torch._foreach_sub_(self._prev, params)   # prev now holds -(update)
        self._param_tensors["update"] = stats.foreach_norms(self._prev, 2.0)
        self._param_tensors["norm"] = stats.foreach_norms(params, 2.0)
        self._last_norm = self._param_tensors["norm"]

    # ---- one transfer per step ----------------------------------------------------------------
    def finish_step(self, loss: torch.Tensor, grad_scale: float = 1.0) -> StepStats:
        device = loss.device
        parts = [loss.detach().reshape(1).to(torch.float32)]
        act = torch.stack(self._act_rows).to(device) if self._act_rows else None
        grad = torch.stack(self._grad_rows).to(device) if self._grad_rows else None
        for block in (act, grad):
            if block is not None:
                parts.append(block.reshape(-1))
        self._steps_seen += 1
        names = ("grad_norm", "grad_max", "grad_zeros", "norm_before", "update", "norm")
        for name in names:
            if name in self._param_tensors:
                parts.append(self._param_tensors[name].to(device).reshape(-1))
        flat = torch.cat(parts).tolist()  # the step's only host synchronisation

        out = StepStats(loss=flat[0], grad_scale=grad_scale)
        pos = 1
        if act is not None:
            for owner, numel in zip(self._act_owner, self._act_numel):
                out.act[owner] = flat[pos:pos + stats.ROW_WIDTH] + [float(numel)]
                pos += stats.ROW_WIDTH
        if grad is not None:
            for owner, numel in zip(self._grad_owner, self._grad_numel):
                # Output gradients are seen before GradScaler.unscale_: row_facts undoes the scale.
                out.grad[owner] = flat[pos:pos + stats.ROW_WIDTH] + [float(numel)]
                pos += stats.ROW_WIDTH
        count = len(self.params)
        present = getattr(self, "_grad_present", [])
        per_param: dict[str, list[Optional[float]]] = {}
        for name in names:
            if name not in self._param_tensors:
                per_param[name] = [None] * count
                continue
            n = self._param_tensors[name].numel()
            values = flat[pos:pos + n]
            pos += n
            if name.startswith("grad_"):
                full: list[Optional[float]] = [None] * count
                for i, v in zip(present, values):
                    full[i] = v
                per_param[name] = full
            else:
                per_param[name] = list(values)
        out.param_grad_norm = per_param["grad_norm"]
        out.param_grad_max = per_param["grad_max"]
        out.param_grad_zeros = per_param["grad_zeros"]
        out.param_norm_before = per_param["norm_before"]  # type: ignore[assignment]
        out.update_norm = per_param["update"]  # type: ignore[assignment]
        out.param_norm = per_param["norm"]  # type: ignore[assignment]
        squares = [g * g for g in out.param_grad_norm if g is not None]
        out.total_grad_norm = math.sqrt(sum(squares)) if squares else math.nan
        self._reset()
        return out
