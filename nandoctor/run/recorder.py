"""Per-step, per-module statistics on the normal (cheap) path.

Forward hooks collect each module's output and, on the full steps (every ZERO_EVERY-th, the
first included), a hook on that output collects its gradient during backward; a batch of
collected tensors is reduced a few kernels per tensor shape (`stats.batch_rows`) when it reaches
`stats.BATCH_BYTES`, when the forward (or backward) ends, or at the latest in `finish`, so the
kernel count of a step does not grow with the number of modules. A collected tensor stays alive
at most until its batch is reduced: most are saved for backward by autograd anyway, and the rest
are bounded by BATCH_BYTES. Parameters are reduced the same way. Rows stay on the device until
`finish`, which moves the whole step to the host in one transfer together with the finiteness
facts: memory grows with the number of modules, not with activations.

A module output that is changed in place after its hook (`out += identity`, an in-place ReLU)
would be measured after the change: the batch notes each tensor's version counter, a row whose
tensor changed is dropped for that step, and from then on that module's outputs are reduced in
the hook itself. The first step reduces every output in its hook (a few 0-dim reductions each,
turned into rows together) and learns which ones change.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Optional

import torch

from . import stats
from ..trace import Phase
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


# Update ratios compare each parameter with its copy from before the step. A parameter of more
# than UPDATE_SAMPLE elements is compared on an evenly strided sample of them (the sample's
# ||dp|| / ||p|| estimates the tensor's: within 3-5% for AdamW steps of 64x64 to 768x3072
# layers, where the rules' update-ratio thresholds are orders of magnitude apart), so the copy
# grows with the number of parameter tensors, not their size: a model of 1000 small modules
# keeps ~1.2 MB instead of its 4.4 MB of weights, a GPT-2-small-shaped one ~0.2 MB, not 340 MB.
UPDATE_SAMPLE = 1 << 10


def _update_sample(p: torch.Tensor) -> torch.Tensor:
    return stats.strided_sample(p, UPDATE_SAMPLE)


class _Batch:
    """Tensors (activations, or output gradients) waiting for one fused reduction, and the rows
    already reduced. Owners: the module indices whose row each tensor counts in."""

    def __init__(self, full: bool):
        self.full = full
        self.pending: list[torch.Tensor] = []
        self.versions: list[int] = []
        self.owners: list[list[int]] = []
        self.bytes = 0
        self.rows: list[torch.Tensor] = []          # [k, width] device tensors, one per reduction
        self.row_owners: list[list[int]] = []       # owners of each reduced row, in order
        self.numels: list[int] = []
        self.changed: set[int] = set()              # modules whose tensor changed before its reduction
        self.probes: list[tuple[weakref.ref, int, list[int]]] = []   # first step: (tensor, version, owners)
        # Tensors reduced at once in their hook (the first step; outputs changed in place after
        # it): their 0-dim reductions, turned into rows together at the next flush.
        self.early: list[tuple[torch.Tensor, ...]] = []

    def add(self, tensor: torch.Tensor, owners: list[int], now: bool) -> None:
        if now:
            if self.pending:
                self.reduce()           # rows stay in arrival order
            if self.early and self.early[0][0].device != tensor.device:
                self._flush_early()
            self.early.append(stats.row_parts(tensor, self.full))
            self.row_owners.append(owners)
            self.numels.append(tensor.numel())
            return
        self.pending.append(tensor)
        self.versions.append(tensor._version)
        self.owners.append(owners)
        self.bytes += tensor.numel() * tensor.element_size()
        if self.bytes >= stats.BATCH_BYTES:
            self.reduce()

    def _flush_early(self) -> None:
        if self.early:
            self.rows.append(stats.parts_to_rows(self.early, self.full))
            self.early = []

    def reduce(self) -> None:
        self._flush_early()
        if not self.pending:
            return
        keep = [i for i, (t, v) in enumerate(zip(self.pending, self.versions)) if t._version == v]
        if len(keep) < len(self.pending):
            for i in set(range(len(self.pending))) - set(keep):
                self.changed.update(self.owners[i])
        tensors = [self.pending[i] for i in keep]
        if tensors:
            self.rows.append(stats.batch_rows(tensors, self.full))
            self.row_owners.extend(self.owners[i] for i in keep)
            self.numels.extend(t.numel() for t in tensors)
        self.pending, self.versions, self.owners, self.bytes = [], [], [], 0

    def watch_changes(self, tensor: torch.Tensor, owners: list[int]) -> None:
        """First step: remember the tensor's version to learn whether it changes in place later."""
        try:
            self.probes.append((weakref.ref(tensor), tensor._version, owners))
        except TypeError:
            pass

    def changed_since_hook(self) -> set[int]:
        out: set[int] = set(self.changed)
        for ref, version, owners in self.probes:
            t = ref()
            if t is not None and t._version != version:
                out.update(owners)
        self.probes = []
        return out

    def flat(self, device: torch.device) -> Optional[torch.Tensor]:
        self.reduce()
        if not self.rows:
            return None
        rows = self.rows[0] if len(self.rows) == 1 else torch.cat([r.to(device) for r in self.rows])
        return rows.to(device).reshape(-1)

    def read(self, flat: list[float], pos: int, width: int) -> tuple[dict[int, list[float]], int]:
        """Host rows per module (ROW plus the element count), several tensors combined."""
        per_owner: dict[int, list[list[float]]] = {}
        numel: dict[int, int] = {}
        out: dict[int, list[float]] = {}
        pad = [stats.UNMEASURED] * (stats.ROW_WIDTH - width)
        for owners, n in zip(self.row_owners, self.numels):
            row = flat[pos:pos + width]
            pos += width
            if len(owners) == 1 and owners[0] not in out and owners[0] not in per_owner \
                    and owners[0] not in self.changed:
                out[owners[0]] = row + pad + [float(n)]     # the common case: one tensor, one module
                continue
            for owner in owners:
                if owner in self.changed:
                    continue
                per_owner.setdefault(owner, []).append(row)
                numel[owner] = numel.get(owner, 0) + n
        for owner, rows in per_owner.items():
            if owner in out:        # a module that also had a single-tensor row: combine them
                first = out.pop(owner)
                rows = [first[:width]] + rows
                numel[owner] += int(first[-1])
            out[owner] = stats.padded_row(stats.combine_rows(rows)) + [float(numel[owner])]
        return out, pos


class Recorder(FinitenessCheck):
    """A finiteness check that also records every module. Attach for the duration of a run;
    `detach()` in a `finally:`."""

    _EXTRA = (("grad_zeros", True), ("norm_before", False), ("update", False))

    def __init__(self, model: torch.nn.Module):
        self.modules = list(model.named_modules())
        self.param_names = [name for name, p in model.named_parameters() if p.requires_grad]
        super().__init__([p for p in model.parameters() if p.requires_grad])
        self._steps_seen = 0
        self._in_backward = False
        self._prev: Optional[list[torch.Tensor]] = None      # parameters (or samples) before the step, reused buffers
        self._views: list[torch.Tensor] = []
        self._sampled: list[bool] = []
        self._sample_norm: Optional[torch.Tensor] = None
        self._last_norm: Optional[torch.Tensor] = None
        self._handles: list[Any] = []
        # Modules whose outputs (or output gradients) change in place after their hook: reduced
        # in the hook itself rather than in the batch.
        self._eager_act: set[int] = set()
        self._eager_grad: set[int] = set()
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
        # max |x| (NaN/Inf presence, headroom) is taken on every step.
        self._full = self._steps_seen % ZERO_EVERY == 0
        self._probing = self._steps_seen == 0
        self._acts = _Batch(self._full)
        self._grads = _Batch(self._full)
        # Containers (Sequential, a block returning its last child's output) see the very
        # tensor their child just saw: count it once, for both modules.
        self._last_output: Optional[weakref.ref] = None
        self._last_owners: Optional[list[int]] = None
        self._grad_watch: dict[int, tuple[weakref.ref, list[int]]] = {}

    def on_phase(self, phase: Any) -> None:
        from ..trace import Phase
        self._in_backward = phase == Phase.BACKWARD
        if phase is Phase.DATA and (self._acts.rows or self._acts.pending):
            self._reset()          # a step that stopped early left its rows: start afresh
        elif phase is not Phase.FORWARD:
            self._acts.reduce()    # the forward is over: its outputs need not wait longer
            self._eager_act |= self._acts.changed_since_hook()

    # ---- hooks ------------------------------------------------------------------------------
    def _on_forward(self, index: int, module: torch.nn.Module, args: Any, output: Any) -> None:
        if stats.in_functorch_transform() or compiling():   # per-sample rows cannot leave a transform;
            return                                          # a compiled forward's graph gets nothing added
        if type(output) is torch.Tensor or isinstance(output, torch.Tensor):   # the common case, no walk
            if not ((output.is_floating_point() or output.is_complex()) and output.numel()):
                return
            tensors = [output]
        else:
            tensors = stats.floating_tensors(output)
            if not tensors:
                return
        last = self._last_output
        if len(tensors) == 1 and last is not None and last() is tensors[0] and self._last_owners is not None:
            self._last_owners.append(index)
        else:
            eager = self._probing or index in self._eager_act
            acts = self._acts
            for i, t in enumerate(tensors):
                owners = [index]
                if i == 0:
                    self._last_owners = owners
                # Not detached (one more op per module): the batch is reduced under no_grad.
                acts.add(t, owners, eager and i == len(tensors) - 1)
                if self._probing:
                    acts.watch_changes(t, owners)
            self._last_output = weakref.ref(tensors[0]) if len(tensors) == 1 else None
        # Output gradients are recorded on the full steps only: a Python hook per module in
        # backward costs as much as the forward's whole bookkeeping, and no rule reads them (the
        # report's per-layer table does). A non-finite gradient is still caught on every step by
        # the parameters' gradient norms, and its origin op by the replay.
        if not self._full or not torch.is_grad_enabled():
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
        node = target.grad_fn
        if node is not None:
            # A pre-hook on the node that made the output sees the same gradient as a tensor
            # hook, at a fraction of the Python cost of Tensor.register_hook.
            node.register_prehook(partial(self._on_node_grad, owners, target.output_nr))
        else:
            target.register_hook(partial(self._on_grad, owners))

    def _on_node_grad(self, owners: list[int], output_nr: int, grad_outputs: tuple) -> None:
        grad = grad_outputs[output_nr] if output_nr < len(grad_outputs) else None
        if isinstance(grad, torch.Tensor) and grad.numel():
            self._on_grad(owners, grad)

    def _on_grad(self, owners: list[int], grad: torch.Tensor) -> None:
        if not self._in_backward:
            # A backward the user's own step runs (a GAN's discriminator update inside
            # training_step): not the step's scaled backward, so `grad_scale` does not apply.
            return
        eager = self._probing or any(i in self._eager_grad for i in owners)
        self._grads.add(grad, owners, eager)
        if self._probing:
            self._grads.watch_changes(grad, owners)

    # ---- parameters -------------------------------------------------------------------------
    def after_backward(self) -> None:
        self._grads.reduce()       # the backward is over: its gradients need not wait longer
        self._eager_grad |= self._grads.changed_since_hook()
        super().after_backward()
        # Zero shares feed only the underflow rule: sampled every ZERO_EVERY steps to keep the
        # per-parameter kernel count down on models with thousands of parameters.
        if self._full:
            self._reduced["grad_zeros"] = stats.zero_counts(
                [p.grad for p in self.params if p.grad is not None])

    @torch.no_grad()          # foreach on the parameters themselves: no per-parameter detach
    def before_optimizer_step(self) -> None:
        params = self.params
        if not params:
            return
        views = [_update_sample(p) for p in params]
        if self._prev is None or [t.shape for t in self._prev] != [v.shape for v in views]:
            self._prev = [torch.empty(v.shape, dtype=v.dtype, device=v.device) for v in views]
        torch._foreach_copy_(self._prev, views)
        self._views = views
        self._sampled = [v.numel() < p.numel() for v, p in zip(views, params)]
        # The norm before this step is the norm after the last one: measure it only once.
        last = self._last_norm
        self._reduced["norm_before"] = last if last is not None else stats.foreach_norms(params, 2.0)
        # A sampled parameter's update is scaled by ||p|| / ||sample of p||, so that the update
        # ratio is the sample's own ||dp|| / ||p||.
        self._sample_norm = stats.foreach_norms(self._prev, 2.0) if any(self._sampled) else None

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        params = self.params
        if not params or self._prev is None:
            return
        torch._foreach_sub_(self._prev, self._views)   # prev now holds -(update)
        update = stats.foreach_norms(self._prev, 2.0)
        if self._sample_norm is not None:
            before = self._reduced["norm_before"].to(update.device, update.dtype)
            sampled = torch.tensor(self._sampled, device=update.device)
            scale = torch.where(sampled & (self._sample_norm > 0), before / self._sample_norm.clamp_min(1e-30), 1.0)
            update = update * scale
        self._reduced["update"] = update
        self._views = []
        super().after_optimizer_step()
        self._last_norm = self._reduced["norm"]

    # ---- one transfer per step ----------------------------------------------------------------
    def _leading_parts(self, device: torch.device) -> list[torch.Tensor]:
        parts = []
        for batch in (self._acts, self._grads):
            flat = batch.flat(device)
            if flat is not None:
                parts.append(flat)
        return parts

    def _read_leading(self, flat: list[float], pos: int) -> int:
        width = stats.row_width(self._full)
        # Output gradients are seen before GradScaler.unscale_: row_facts undoes the scale.
        self._act_read, pos = self._acts.read(flat, pos, width)
        self._grad_read, pos = self._grads.read(flat, pos, width)
        self._eager_act |= self._acts.changed_since_hook()
        self._eager_grad |= self._grads.changed_since_hook()
        return pos

    def _facts(self, loss: float, grad_scale: float, values: dict[str, list[Optional[float]]]) -> StepFacts:
        out = StepStats(loss=loss, act=self._act_read, grad=self._grad_read, grad_scale=grad_scale,
                        param_grad_zeros=values["grad_zeros"],
                        param_norm_before=values["norm_before"],  # type: ignore[arg-type]
                        update_norm=values["update"])  # type: ignore[arg-type]
        self._steps_seen += 1
        self._reset()
        return out
