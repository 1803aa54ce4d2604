"""Per-step, per-module statistics on the normal (cheap) path.

Forward hooks reduce each module's output to one row on the device; a tensor hook on that
output reduces its gradient the same way during backward; parameters are reduced with fused
foreach kernels. Rows stay on the device until `finish`, which moves the whole step to the host
in one transfer together with the finiteness facts. No tensor is kept alive past its own hook:
memory grows with the number of modules, not with activations.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Optional

import torch

from . import stats
from .compiled import compiling
from .probes import FinitenessCheck, StepFacts


# Every memory pass over an activation costs about as much as a small layer on CPU: the
# norm and zero-count passes run every ZERO_EVERY steps; the aminmax pass runs every step.
ZERO_EVERY = 4


@dataclass
class StepStats(StepFacts):
    """Host-side numbers of one recorded step. Activation/gradient rows are ROW plus the element count."""
    act: dict[int, list[float]] = field(default_factory=dict)      # module index -> ROW
    grad: dict[int, list[float]] = field(default_factory=dict)     # module index -> ROW (unscaled)
    param_grad_zeros: list[Optional[float]] = field(default_factory=list)
    param_norm_before: list[float] = field(default_factory=list)
    update_norm: list[float] = field(default_factory=list)
    grad_scale: float = 1.0


class Recorder(FinitenessCheck):
    """A finiteness check that also records every module. Attach for the duration of a run;
    `detach()` in a `finally:`."""

    _EXTRA = (("grad_zeros", True), ("norm_before", False), ("update", False))

    def __init__(self, model: torch.nn.Module):
        self.modules = list(model.named_modules())
        self.param_names = [name for name, p in model.named_parameters() if p.requires_grad]
        super().__init__([p for p in model.parameters() if p.requires_grad])
        self._steps_seen = 0
        self._prev: Optional[list[torch.Tensor]] = None      # parameters before the step, reused buffers
        self._last_norm: Optional[torch.Tensor] = None
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

    def wants_batch_sources(self) -> bool:
        return self._steps_seen == 0     # where batch tensors are made, once per run

    def _reset(self) -> None:
        # Norms and zero shares are sampled every ZERO_EVERY steps (first step included);
        # min/max (max|x|, NaN/Inf presence, headroom) are taken on every step.
        self._full = self._steps_seen % ZERO_EVERY == 0
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

    # ---- hooks ------------------------------------------------------------------------------
    def _on_forward(self, index: int, module: torch.nn.Module, args: Any, output: Any) -> None:
        if compiling():      # a compiled forward (scan `compile`): no row, nothing added to its graph
            return
        if isinstance(output, torch.Tensor):      # the common case, without walking a structure
            tensors = [output] if (output.is_floating_point() or output.is_complex()) and output.numel() else []
        else:
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
        super().after_backward()
        # Zero shares feed only the underflow rule: sampled every ZERO_EVERY steps to keep the
        # per-parameter kernel count down on models with thousands of parameters.
        if self._full:
            self._reduced["grad_zeros"] = stats.zero_counts(
                [p.grad for p in self.params if p.grad is not None])

    def before_optimizer_step(self) -> None:
        params = [p.detach() for p in self.params]
        if not params:
            return
        if self._prev is None or len(self._prev) != len(params):
            self._prev = [torch.empty_like(p) for p in params]
        torch._foreach_copy_(self._prev, params)
        # The norm before this step is the norm after the last one: measure it only once.
        last = self._last_norm
        self._reduced["norm_before"] = last if last is not None else stats.foreach_norms(self._prev, 2.0)

    def after_optimizer_step(self) -> None:
        params = [p.detach() for p in self.params]
        if not params or self._prev is None:
            return
        torch._foreach_sub_(self._prev, params)   # prev now holds -(update)
        self._reduced["update"] = stats.foreach_norms(self._prev, 2.0)
        super().after_optimizer_step()
        self._last_norm = self._reduced["norm"]

    # ---- one transfer per step ----------------------------------------------------------------
    def _leading_parts(self, device: torch.device) -> list[torch.Tensor]:
        parts = []
        for rows in (self._act_rows, self._grad_rows):
            if rows:
                parts.append(torch.stack(rows).to(device).reshape(-1))
        return parts

    def _read_leading(self, flat: list[float], pos: int) -> int:
        width = stats.row_width(self._full)
        self._act_read: dict[int, list[float]] = {}
        self._grad_read: dict[int, list[float]] = {}
        for owners, numels, out in ((self._act_owner, self._act_numel, self._act_read),
                                    (self._grad_owner, self._grad_numel, self._grad_read)):
            # Output gradients are seen before GradScaler.unscale_: row_facts undoes the scale.
            for owner, numel in zip(owners, numels):
                out[owner] = stats.padded_row(flat[pos:pos + width]) + [float(numel)]
                pos += width
        return pos

    def _facts(self, loss: float, grad_scale: float, values: dict[str, list[Optional[float]]]) -> StepFacts:
        out = StepStats(loss=loss, act=self._act_read, grad=self._grad_read, grad_scale=grad_scale,
                        param_grad_zeros=values["grad_zeros"],
                        param_norm_before=values["norm_before"],  # type: ignore[arg-type]
                        update_norm=values["update"])  # type: ignore[arg-type]
        self._steps_seen += 1
        self._reset()
        return out
