"""The failing step, run once more by the user's own loop, traced op by op.

When `nandoctor run`'s guard fires at an optimizer step (a NaN loss or gradient), the weights
that produced the failing step are still live: the step pre-hook runs before anything changes
them, and the guard turns that `optimizer.step()` into a no-op. The user's loop then goes on to
its next iteration. The first training forward of that iteration becomes the re-run:

- every generator goes back to the state the failing step's first forward saw (dropout masks
  come out the same);
- the inputs of each top-level module call are replaced, in order, by those the failing step
  passed: every tensor that needs no gradient (the batch, targets handed to a loss module, a
  detached RNN state); tensors that need a gradient are the re-run's own (a discriminator's
  input made by the generator in this very iteration);
- the origin tracer (run/origin.py) watches every op of the forward, the loss, the backward and
  the clipping, with the lines of the user's own files, until the next optimizer step (or the
  end of the backward pass in a loop with no optimizer). Then the guard stops the script.

The user's own code computes the loss, so no adapter, model file or loss function is needed, and
every location is a line the user wrote.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..run import stats
from ..run.origin import OriginTracer
from ..trace import NonfiniteEvent, Phase
from . import bundle_writer
from ..run.stats import nonfinite_rows
from .guard import batch_name, describe_nonfinite_rows, shown_list as _shown


@dataclass
class TopCall:
    """One top-level module call of a training step: the module and the inputs it was given."""
    module: Optional[torch.nn.Module]          # None: from a bundle (matched by position and role)
    args: tuple
    kwargs: dict
    owns_parameters: bool          # the model (forward) or another module, e.g. a loss module
    site: Optional[tuple[str, int, str]] = None    # the user's line that made the call
    holder: Optional[torch.nn.Module] = None       # the module whose method made the call (discovery only)
    name: Optional[str] = None                     # what the user's code calls the module (discovery only)
    carried: frozenset = frozenset()               # input paths that are the model's own output of the last step


@dataclass
class RerunOutcome:
    event: Optional[NonfiniteEvent] = None
    reproduced: Optional[bool] = None      # None: the re-run did not happen or did not finish
    note: str = ""
    losses: list[float] = field(default_factory=list)
    # When the origin's values were already non-finite in data the loop passed in: that tensor
    # and its non-finite rows (the guard knows which DataLoader samples those are).
    entered: Optional[torch.Tensor] = None
    entered_rows: list[int] = field(default_factory=list)
    # The traced step did not reach its end (its optimizer step, its closure's return, the end of
    # its backward): why (trace.UnfinishedStep.reason) and what was traced; None when it ended.
    unfinished: Optional[dict[str, Any]] = None


# Bounds on a traced step (docs/guides/replay.md): a step that never reaches its end (a loop shape
# the guard does not know) would be traced through the rest of the script; it is cut there, and
# what was traced is diagnosed. One training step of the models nandoctor is used on takes
# thousands to a few hundred thousand ops; tracing runs at roughly 10-50 microseconds an op on a CPU.
TRACE_MAX_OPS = 2_000_000
TRACE_MAX_SECONDS = 300.0
TIME_CHECK_EVERY = 256          # ops between two reads of the clock (a read per op shows)


class TraceLimit(BaseException):
    """Raised from inside the traced step when it ran past its op or time budget (a step that
    never ends where it is meant to: the rest of the script would be traced op by op). A
    BaseException, so the script's own `except Exception:` cannot swallow it."""


def substitute(logged: TopCall, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The re-run's inputs for a call: the failing step's tensors wherever they need no gradient."""
    return tuple(_merge(list(args), list(logged.args))), _merge(dict(kwargs), dict(logged.kwargs))


def _merge(new: Any, old: Any) -> Any:
    """`new` with each tensor that needs no gradient replaced by the tensor at the same place in
    `old` (a tensor there that needs one, or a place `old` lacks, stays the re-run's own)."""
    if isinstance(new, torch.Tensor):
        if new.requires_grad or not isinstance(old, torch.Tensor):
            return new
        return old.to(new.device) if old.device != new.device else old
    if isinstance(new, dict) and isinstance(old, dict):
        return type(new)((k, _merge(v, old[k]) if k in old else v) for k, v in new.items()) \
            if not hasattr(new, "to_tuple") else _merge_mapping_in_place(new, old)
    if isinstance(new, (list, tuple)) and isinstance(old, (list, tuple)) and len(new) == len(old):
        merged = [_merge(n, o) for n, o in zip(new, old)]
        if isinstance(new, tuple) and hasattr(new, "_fields"):
            return type(new)(*merged)
        return type(new)(merged)
    return new


def _merge_mapping_in_place(new: Any, old: dict) -> Any:
    # Hugging Face BatchEncoding / ModelOutput: keep the class, replace the values.
    for key in list(new.keys()):
        if key in old:
            new[key] = _merge(new[key], old[key])
    return new


class Rerun:
    """State of one traced re-run: armed at the failing step, tracing during the next iteration."""

    def __init__(self, model: torch.nn.Module, precision: str, step: int, check: str,
                 rng: Optional[dict[str, Any]], calls: list[TopCall], params: list[torch.Tensor],
                 model_name: Optional[str] = None, qualified_modules: bool = False):
        self.model = model
        self.model_name = model_name                  # module paths as the script names them (OriginTracer)
        self.qualified_modules = qualified_modules
        self.precision = precision
        self.step = step
        self.check = check
        self.rng = rng
        self.calls = calls
        self.params = params
        self.state = "armed"                  # armed -> tracing -> done
        self.tracer: Optional[OriginTracer] = None
        self._next_call = 0
        self.matched_call: Optional[TopCall] = None     # the logged call the latest top-level call replays
        self._losses: list[torch.Tensor] = []
        self.batches: list[tuple[int, Any, Optional[list]]] = []   # the failing step's DataLoader batches
        self.outcome = RerunOutcome()
        # Bounds on the traced step (0: none): a step that never reaches its end is cut here.
        self.max_ops = TRACE_MAX_OPS
        self.max_seconds = TRACE_MAX_SECONDS
        self.began = 0.0
        self.limit_hit: Optional[str] = None

    # ---- events from the guard's hooks -----------------------------------------------------------
    def on_top_call(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Optional[tuple[tuple, dict]]:
        """A top-level training call of the user's loop; returns the inputs to use instead."""
        if self.state == "armed":
            if not self._is_model(module):
                return None           # e.g. a loss module before the model: wait for the model
            first = next((c for c in self.calls if c.owns_parameters), None)
            if first is not None and not self._matches(first, module):
                # A model called again in the failing iteration after the failing optimizer's
                # step (a GAN's discriminator scoring the fakes for the generator's loss): the
                # re-run starts where the failing step did, at the next iteration's first call.
                return None
            self._begin()
            self.tracer.entered_call(module)
        if self.state != "tracing":
            return None
        replaced = None
        if self._next_call < len(self.calls) and self._matches(self.calls[self._next_call], module):
            self.matched_call = self.calls[self._next_call]
            replaced = substitute(self.matched_call, args, kwargs)
            self._next_call += 1
        self.tracer.set_phase(Phase.FORWARD if self._is_model(module) else Phase.LOSS)
        return replaced

    def on_top_return(self, module: torch.nn.Module) -> None:
        if self.state == "tracing":
            self.tracer.set_phase(Phase.LOSS)

    def on_backward(self, loss: Any) -> None:
        if self.state != "tracing":
            return
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._losses.append(loss)
        self.tracer.set_phase(Phase.BACKWARD)

    def after_backward(self) -> None:
        if self.state == "tracing":
            # Unscaling and clipping run between the backward pass and the optimizer step.
            self.tracer.set_phase(Phase.OPTIMIZER)

    # ---- the traced step ------------------------------------------------------------------------
    def _matches(self, logged: TopCall, module: torch.nn.Module) -> bool:
        if logged.module is not None:
            return logged.module is module
        return logged.owns_parameters == any(True for _ in module.parameters())

    def _is_model(self, module: torch.nn.Module) -> bool:
        return module is self.model or any(True for _ in module.parameters())

    def begin(self) -> None:
        """Start tracing now (a closure re-run), rather than at the loop's next training forward."""
        if self.state == "armed":
            self._begin()
            # The closure is the training step (Lightning's automatic optimization): its own ops
            # before the first module call (a scale computed from the batch) are its forward.
            self.tracer.set_phase(Phase.FORWARD)

    def _begin(self) -> None:
        if self.rng is not None:
            bundle_writer.restore_rng(self.rng)
        self.tracer = OriginTracer(users_module(self.model), self.precision, self.step,
                                   model_name=self.model_name, qualified_modules=self.qualified_modules)
        if self.max_ops or self.max_seconds:
            self.tracer.on_each_op = self._within_budget
        self.began = time.perf_counter()
        self.tracer.__enter__()
        self.state = "tracing"

    def _within_budget(self, ops: int) -> None:
        """Called by the tracer for every op it sees: cut a step that runs past its bounds."""
        if self.limit_hit is not None:
            return
        if self.max_ops and ops > self.max_ops:
            self.limit_hit = f"the traced step ran past {self.max_ops:,} ops without reaching its end"
        elif self.max_seconds and ops % TIME_CHECK_EVERY == 0 and time.perf_counter() - self.began > self.max_seconds:
            self.limit_hit = (f"the traced step ran past {self.max_seconds:g} s ({ops:,} ops) without reaching its end")
        if self.limit_hit is not None:
            raise TraceLimit(self.limit_hit)

    def finish(self, unfinished: Optional[tuple[str, str]] = None) -> RerunOutcome:
        """The traced iteration reached its optimizer step (or its backward ended): the origin.
        `unfinished` (reason, detail): it never got there (the script ended, raised or exited, or
        the trace hit its bounds); what was traced until then is judged, its first non-finite op
        the origin when neither loss nor gradients went non-finite yet."""
        if self.state != "tracing" or self.tracer is None:
            return self.outcome
        tracer = self.tracer
        try:
            with tracer.suspended():
                surfaces, failure = self._surfaces()
                self.outcome.losses = [float(l.detach().float()) for l in self._losses]
        finally:
            self.close()
        if unfinished is not None:
            reason, detail = unfinished
            self.outcome.unfinished = dict(reason=reason, detail=detail, ops=tracer.ops_seen,
                                           seconds=round(time.perf_counter() - self.began, 3))
            if failure is None and tracer.origin([]) is not None:
                failure = "op"        # born before the step could surface it in a loss or gradient
        self.outcome.reproduced = failure is not None
        if failure is None:
            self.outcome.note = (f"step {self.step} stayed finite when the loop ran it again from the same weights, "
                                 "inputs and random state")
            if unfinished is not None:
                self.outcome.reproduced = None      # it never ran to its end: not a finite re-run
                self.outcome.note = (f"step {self.step} was traced ({tracer.ops_seen:,} ops) but did not end normally "
                                     f"({unfinished[1]}), and nothing non-finite was born before that")
            return self.outcome
        root = tracer.origin(surfaces)
        if root is None:
            self.outcome.note = "the re-run failed again, but no single op produced the first non-finite value"
            return self.outcome
        self.outcome.event = tracer.to_event(root, failure)
        self.outcome.event.replay_traced = True
        if root.entered_from == "data":
            self.outcome.entered = root.entered_ref() if root.entered_ref is not None else None
            self.outcome.entered_rows = list(root.entered_rows)
            self.outcome.event = entered_data_event(self.outcome.event, root.entered_input, root.entered_rows)
        return self.outcome

    def _surfaces(self) -> tuple[list[torch.Tensor], Optional[str]]:
        bad_losses = [l for l in self._losses if not bool(torch.isfinite(l.detach()).all())]
        if bad_losses:
            return bad_losses, "loss"
        grads = [p.grad for p in self.params if p.grad is not None]
        bad_grads = [g for g in grads if not bool(torch.isfinite(g).all())]
        if bad_grads:
            return bad_grads, "gradients"
        return [], None

    def close(self) -> None:
        """Leave the tracer (also when the script ends or raises mid-re-run)."""
        if self.tracer is not None and self.state == "tracing":
            self.tracer.__exit__(None, None, None)
        self.state = "done"


def users_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module the user wrote, inside DistributedDataParallel or torch.compile's wrapper: module
    paths read as the user named them (`body.0`, not `module.body.0`)."""
    for _ in range(4):
        inner = getattr(model, "module", None) if isinstance(model, torch.nn.parallel.DistributedDataParallel) \
            else getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner
    return model


def data_event(precision: str, step: int, batch: Any,
               indices_of: Optional[Callable[[torch.Tensor, list[int]], Optional[list]]] = None) -> NonfiniteEvent:
    """A batch that holds NaN/Inf needs no re-run: which tensor, how many values, which rows
    (and, from a DataLoader, which dataset samples)."""
    bad = []
    for name, t in stats.iter_tensors(batch):
        if (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(torch.isfinite(t.detach()).all()):
            bad.append((name, t))
    first_name, first = bad[0] if bad else ("", None)
    count = int((~torch.isfinite(first.detach())).sum()) if first is not None else None
    has_nan = bool(torch.isnan(first.detach()).any()) if first is not None else True
    detail = describe_nonfinite_rows(batch)
    if first is not None and indices_of is not None:
        samples = indices_of(first, nonfinite_rows(first))
        if samples:
            detail += f"; dataset indices {_shown(samples)}"
    return NonfiniteEvent(precision=precision, step=step, phase=Phase.DATA.value, kind="nan" if has_nan else "inf",
                          tensor=batch_name(first_name), count=count, surfaced_in="batch", detail=detail,
                          reproduced=True)


def entered_data_event(event: NonfiniteEvent, input_index: Optional[int], rows: list[int]) -> NonfiniteEvent:
    """The traced op took values that were already non-finite in data the loop passed in (targets
    handed to a loss function): the failure is the data's; the op's line is where it entered."""
    summary = event.inputs[input_index] if input_index is not None and input_index < len(event.inputs) else None
    event.phase = Phase.DATA.value
    event.entered_from = "data"
    op = event.op.split(".")[1] if event.op and "." in event.op else (event.op or "an op")
    event.tensor = f"input {input_index} of {op}" if input_index is not None else f"an input of {op}"
    if summary is not None:
        event.count = summary.nan + summary.inf
        event.kind = "nan" if summary.nan else "inf"
    numel = 1
    for n in (summary.shape if summary is not None else []):
        numel *= n
    event.detail = (f"{event.tensor}: {event.count} of {numel} values non-finite"
                    + (f", sample rows {_shown(rows)}" if rows else "")
                    + " (already non-finite when the loop passed it in)")
    return event
