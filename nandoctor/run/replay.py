"""Op-level tracing of one replayed step: where was the first non-finite value born?

Used only for the failing step, so it may synchronise and walk the Python stack per op.

Two modes cooperate:
- a TorchFunctionMode (forward only) tags every autograd node with the module, op and source
  line that created it, so a backward op can be traced to the forward call that made its node;
- a TorchDispatchMode sees every aten op of every phase (data, forward, loss, backward,
  optimizer) and keeps, for each non-finite tensor, the event where its non-finite values
  were born (provenance). The origin is the root of the provenance of the tensor where the
  runner first saw the failure (loss, a gradient, a parameter, a batch tensor).

Deliberate infinities are not origins: an op with a non-finite scalar argument
(`masked_fill(m, -inf)`, `torch.full(..., -inf)`), an output whose infinities are all negative
and come from `finfo.min`-sized inputs, or a pre-existing all-negative-infinity buffer (a
registered causal mask). A NaN born from such infinities (softmax over a fully masked row) is
itself the origin, flagged `masked_input`.
"""
from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..trace import NonfiniteEvent, OpRef, Phase, SourceLocation, TensorSummary
from . import stats
from .frames import stack_locations
from .probes import StepProbe

_TAG = "nandoctor"
_IGNORED_NAMESPACES = ("profiler", "_c10d_functional", "c10d")


@dataclass
class _Root:
    """Where some non-finite values were born."""
    index: int
    phase: str
    op: str
    kind: str                     # nan | inf
    module: str
    source: Optional[SourceLocation]
    user_source: Optional[SourceLocation]
    forward_op: Optional[str] = None
    intentional: bool = False
    masked_input: bool = False
    inputs: list[TensorSummary] = field(default_factory=list)
    output: Optional[TensorSummary] = None
    producer: Optional[OpRef] = None
    target_id: Optional[int] = None   # id of the tensor the op wrote (optimizer attribution)


def _summary(name: str, t: torch.Tensor) -> TensorSummary:
    info = stats.summarise_values(t)
    return TensorSummary(name=name, shape=info.get("shape", []), dtype=info.get("dtype", ""),
                         min=info.get("min"), max=info.get("max"), min_abs=info.get("min_abs"),
                         nan=info.get("nan", 0), inf=info.get("inf", 0), zeros=info.get("zeros", 0),
                         negatives=info.get("negatives", 0))


def _nonfinite(t: torch.Tensor) -> tuple[bool, bool]:
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return False, False
    finite = bool(torch.isfinite(t).all())
    if finite:
        return False, False
    return bool(torch.isnan(t).any()), bool(torch.isinf(t).any())


def _only_negative_inf(t: torch.Tensor) -> bool:
    if not t.is_floating_point():
        return False
    infinite = torch.isinf(t)
    return bool(infinite.any()) and not bool(torch.isnan(t).any()) and bool((t[infinite] < 0).all())


def _mutated_args(func: Any) -> list[int]:
    schema = getattr(func, "_schema", None)
    if schema is None:
        return []
    return [i for i, arg in enumerate(schema.arguments) if arg.alias_info is not None and arg.alias_info.is_write]


class OriginTracer(StepProbe):
    """Context manager that traces one step; a probe of `run_step`, which tells it each phase."""

    def __init__(self, model: torch.nn.Module, precision: str, step: int):
        self.model = model
        self.precision = precision
        self.step = step
        self.phase = Phase.DATA.value
        self._module_stack: list[str] = []
        self._names = {id(m): name for name, m in model.named_modules()}
        self._handles: list[Any] = []
        self._provenance: dict[int, tuple[weakref.ref, Optional[_Root]]] = {}
        self._producers: dict[int, tuple[weakref.ref, OpRef]] = {}
        self.roots: list[_Root] = []
        self._count = 0
        self._dispatch = _DispatchShim(self)
        self._function = _FunctionShim(self)
        self._function_active = False
        self._suspended = 0

    @contextlib.contextmanager
    def suspended(self):
        """nandoctor's own bookkeeping inside a traced step (norms, batch checks) is not traced."""
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1

    # ---- context ------------------------------------------------------------------------------
    def __enter__(self) -> "OriginTracer":
        for module in self.model.modules():
            self._handles.append(module.register_forward_pre_hook(self._push))
            self._handles.append(module.register_forward_hook(self._pop, always_call=True))
        self._dispatch.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._set_function_mode(False)
            self._dispatch.__exit__(*exc)
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()

    def on_phase(self, phase: Phase) -> None:
        self.set_phase(phase)

    def set_phase(self, phase: Phase) -> None:
        self.phase = phase.value
        # Grad-node tagging is only needed while the forward graph is being built.
        self._set_function_mode(phase in (Phase.FORWARD, Phase.LOSS))

    def _set_function_mode(self, on: bool) -> None:
        if on and not self._function_active:
            self._function.__enter__()
            self._function_active = True
        elif not on and self._function_active:
            self._function.__exit__(None, None, None)
            self._function_active = False

    def _push(self, module: torch.nn.Module, args: Any) -> None:
        self._module_stack.append(self._names.get(id(module), type(module).__name__))

    def _pop(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._module_stack:
            self._module_stack.pop()

    # ---- forward: tag autograd nodes ----------------------------------------------------------
    def tag_nodes(self, func: Any, out: Any) -> None:
        tensors = [t for _, t in stats.iter_tensors(out)]
        nodes = [t.grad_fn for t in tensors if t.grad_fn is not None]
        if not nodes:
            return
        name = getattr(func, "__name__", None) or str(func)
        source, user = stack_locations()
        tag = (self._module_stack[-1] if self._module_stack else "", name, source, user)
        pending = list(nodes)
        seen = 0
        while pending and seen < 64:  # nodes made inside this call (cross_entropy -> log_softmax)
            node = pending.pop()
            seen += 1
            try:
                metadata = node.metadata
            except RuntimeError:
                continue
            if _TAG in metadata:
                continue
            metadata[_TAG] = tag
            pending.extend(n for n, _ in node.next_functions if n is not None and type(n).__name__ != "AccumulateGrad")

    # ---- every op -------------------------------------------------------------------------------
    def on_op(self, func: Any, args: tuple, kwargs: dict) -> Any:
        if self._suspended or getattr(func, "namespace", "aten") in _IGNORED_NAMESPACES:
            return func(*args, **kwargs)
        flat_args, _ = tree_flatten((args, kwargs))
        tensor_args = [a for a in flat_args if isinstance(a, torch.Tensor)]
        scalar_nonfinite = any(isinstance(a, float) and not math.isfinite(a) for a in flat_args)
        bad_inputs = []
        for t in tensor_args:
            has_nan, has_inf = _nonfinite(t)
            if has_nan or has_inf:
                bad_inputs.append((t, has_nan, has_inf))
        mutated = _mutated_args(func)
        before: dict[int, torch.Tensor] = {}
        if not bad_inputs:
            for i in mutated:
                if i < len(args) and isinstance(args[i], torch.Tensor):
                    before[i] = args[i].detach().clone()

        out = func(*args, **kwargs)

        out_tensors = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        where = self._where()
        op_name = str(func)
        for t in out_tensors:
            self._producers[id(t)] = (weakref.ref(t), OpRef(op=op_name, module=where[0], source=where[1]))
        bad_outputs = [(t, *_nonfinite(t)) for t in out_tensors]
        bad_outputs = [(t, n, i) for t, n, i in bad_outputs if n or i]
        if not bad_outputs:
            return out
        self._count += 1
        out_nan = any(n for _, n, _ in bad_outputs)
        in_nan = any(n for _, n, _ in bad_inputs)
        known_roots = [self._root_of(t) for t, _, _ in bad_inputs]

        if not bad_inputs or (out_nan and not in_nan and self._only_deliberate(bad_inputs, known_roots)):
            root = self._new_root(func, op_name, args, tensor_args, before, bad_outputs, where,
                                  scalar_nonfinite, masked=bool(bad_inputs))
        else:
            candidates = [r for r in known_roots if r is not None]
            if len(candidates) < len(known_roots):
                # A non-finite input that existed before tracing began: the state itself (a
                # parameter loaded as NaN) or a registered mask. Masks were handled above.
                root = self._new_root(func, op_name, args, tensor_args, before, bad_outputs, where,
                                      scalar_nonfinite, masked=False, preexisting=True)
                candidates.append(root)
            root = min(candidates, key=lambda r: r.index)
        for t, _, _ in bad_outputs:
            self._provenance[id(t)] = (weakref.ref(t), root)
        return out

    def _only_deliberate(self, bad_inputs: list, roots: list[Optional[_Root]]) -> bool:
        for (t, _, _), root in zip(bad_inputs, roots):
            if root is not None and not root.intentional:
                return False
            if root is None and not _only_negative_inf(t):
                return False
        return True

    def _root_of(self, t: torch.Tensor) -> Optional[_Root]:
        entry = self._provenance.get(id(t))
        if entry is None or entry[0]() is not t:
            return None
        return entry[1]

    def _where(self) -> tuple[str, Optional[SourceLocation], Optional[SourceLocation], Optional[str]]:
        """(module, source, user_source, forward_op) of the op being dispatched."""
        if self.phase == Phase.BACKWARD.value:
            node = torch._C._current_autograd_node()
            if node is not None:
                try:
                    tag = node.metadata.get(_TAG)
                except RuntimeError:
                    tag = None
                if tag is not None:
                    module, name, source, user = tag
                    return module, source, user, name
                return "", None, None, node.name()
        source, user = stack_locations()
        module = self._module_stack[-1] if self._module_stack else ""
        return module, source, user, None

    def _new_root(self, func: Any, op_name: str, args: tuple, tensor_args: list[torch.Tensor],
                  before: dict[int, torch.Tensor], bad_outputs: list, where: tuple, scalar_nonfinite: bool,
                  masked: bool, preexisting: bool = False) -> _Root:
        module, source, user, forward_op = where
        first_out = bad_outputs[0][0]
        kind = "nan" if any(n for _, n, _ in bad_outputs) else "inf"
        intentional = False
        if not masked and not preexisting and kind == "inf":
            # A mask, not a failure: infinities that come from an explicit non-finite constant,
            # or only negative infinities made from finfo.min-sized values.
            if scalar_nonfinite:
                intentional = True
            elif all(_only_negative_inf(t) for t, _, _ in bad_outputs):
                limit = torch.finfo(first_out.dtype).max * 0.5 if first_out.is_floating_point() else math.inf
                intentional = any(t.is_floating_point() and t.numel() and float(t.detach().abs().amax()) >= limit
                                  for t in tensor_args)
        inputs: list[TensorSummary] = []
        if not intentional:
            for i, t in enumerate(tensor_args[:6]):
                shown = before.get(i, t) if i < len(args) and args[i] is t else t
                inputs.append(_summary(f"input{i}", shown))
            for a in [a for a in tree_flatten(args)[0] if isinstance(a, (int, float)) and not isinstance(a, bool)][:4]:
                inputs.append(TensorSummary(name="scalar", shape=[], dtype=type(a).__name__, value=float(a)))
        producer = None
        if tensor_args:
            entry = self._producers.get(id(tensor_args[0]))
            if entry is not None and entry[0]() is tensor_args[0]:
                producer = entry[1]
        mutated = _mutated_args(func)
        target = args[mutated[0]] if mutated and mutated[0] < len(args) and isinstance(args[mutated[0]], torch.Tensor) else first_out
        root = _Root(index=self._count, phase=self.phase, op=op_name, kind=kind, module=module, source=source,
                     user_source=user, forward_op=forward_op, intentional=intentional, masked_input=masked,
                     inputs=inputs, output=None if intentional else _summary("output", first_out),
                     producer=producer, target_id=id(target))
        self.roots.append(root)
        return root

    # ---- the answer -----------------------------------------------------------------------------
    def origin(self, surfaces: list[torch.Tensor]) -> Optional[_Root]:
        """Root of the first non-finite surface tensor; else the first unintended root."""
        for t in surfaces:
            if t is None:
                continue
            root = self._root_of(t)
            if root is not None and not root.intentional:
                return self._earlier_forward_birth(root) or root
        return next((r for r in self.roots if not r.intentional), None)

    def _earlier_forward_birth(self, root: _Root) -> Optional[_Root]:
        """A backward NaN from log'(0) = 0/0 follows the forward log(0) = -inf of the same call:
        the forward birth is where the first non-finite value was born."""
        if root.phase != Phase.BACKWARD.value or root.source is None:
            return None
        return next((r for r in self.roots if r.index < root.index and not r.intentional
                     and r.phase in (Phase.FORWARD.value, Phase.LOSS.value) and r.source is not None
                     and (r.source.file, r.source.line) == (root.source.file, root.source.line)), None)

    def to_event(self, root: _Root, surfaced_in: str, optimizer: Optional[torch.optim.Optimizer] = None) -> NonfiniteEvent:
        event = NonfiniteEvent(
            precision=self.precision, step=self.step, phase=root.phase, kind=root.kind, module=root.module,
            op=root.op, source=root.source, user_source=root.user_source, forward_op=root.forward_op,
            inputs=root.inputs, output=root.output, producer=root.producer, masked_input=root.masked_input,
            reproduced=True, surfaced_in=surfaced_in)
        if root.phase == Phase.OPTIMIZER.value and optimizer is not None:
            event.parameter, event.state = _name_optimizer_tensor(self.model, optimizer, root.target_id)
        return event


def _name_optimizer_tensor(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           target: Optional[int]) -> tuple[Optional[str], Optional[str]]:
    names = {id(p): name for name, p in model.named_parameters()}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and id(value) == target:
                return names.get(id(param)), key
        if id(param) == target:
            return names.get(id(param)), None
    # The op wrote a temporary (exp_avg / denom): name the parameter and state left non-finite.
    for param, state in optimizer.state.items():
        if not bool(torch.isfinite(param.detach()).all()):
            bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
                   and v.numel() > 1 and not bool(torch.isfinite(v).all())]
            return names.get(id(param)), (bad[0] if bad else None)
    return None, None


class _DispatchShim(TorchDispatchMode):
    def __init__(self, tracer: OriginTracer):
        super().__init__()
        self.tracer = tracer

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self.tracer.on_op(func, args, kwargs or {})


class _FunctionShim(TorchFunctionMode):
    def __init__(self, tracer: OriginTracer):
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if torch.is_grad_enabled():
            self.tracer.tag_nodes(func, out)
        return out
