"""Op-level tracing of one replayed step: where was the first non-finite value born?

Used only for the failing step, so it may synchronise and walk the Python stack per op.

Two modes cooperate:
- a TorchFunctionMode (forward only) tags every autograd node with the module, op and source
  line that created it, so a backward op can be traced to the forward call that made its node;
- a TorchDispatchMode sees every aten op of every phase (data, forward, loss, backward,
  optimizer) and keeps, for each non-finite tensor, the event where its non-finite values
  were born (provenance). The origin is the root of the provenance of the tensor where the
  runner first saw the failure (loss, a gradient, a parameter, a batch tensor).

Deliberate infinities (masks) are not origins: an infinite constant written by a mask-setting
op (`masked_fill(m, -inf)`, `torch.full(..., -inf)`, `torch.where(m, x, -inf)`, indexed
assignment `x[..., banned] = -inf`, which is `index_put_` / `fill_` on a view), an output whose
infinities are all negative and come from `finfo.min`-sized inputs, or a pre-existing infinite
constant or buffer (a registered causal mask). Element-wise ops carry a mask along (log_softmax
keeps -inf at the masked classes). The origin is the first op that turns a masked infinity into
NaN (softmax over a fully masked row, `0 * -inf`) or into an unmasked infinity (a sum over
masked log-probabilities); it is flagged `masked_input` and names where the mask was set.

A NaN that left the tensor world through `.item()` / `float(t)` and came back as a Python
number (`loss * weight`, `alpha=`) is traced through the conversion: the origin is where that
0-dim tensor's NaN was born, and `scalar_source` names the op that made the converted tensor.

The TorchFunctionMode also keeps the public torch call being run (`torch.logdet`,
`torch.nn.functional.cross_entropy`), so an origin inside a decomposition is reported at the call
the user's line made, with the aten op as detail.
"""
from __future__ import annotations

import contextlib
import math
import sys
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .fused_paths import may_take_fast_path
from ..load.bundle import user_name
from .mode_stack import function_mode_on_stack, leave_function_mode
from ..trace import NonfiniteEvent, OpRef, Phase, SourceLocation, TensorSummary
from . import stats
from .frames import is_library, stack_locations
from .probes import StepProbe

_TAG = "nandoctor"
_IGNORED_NAMESPACES = ("profiler", "_c10d_functional", "c10d")

# Ops that write a chosen constant into chosen positions: an infinity they write is a mask.
_MASK_SETTERS = frozenset({
    "masked_fill", "masked_fill_", "fill", "fill_", "full", "full_like", "new_full", "scalar_tensor",
    "where", "index_put", "index_put_", "_index_put_impl_", "index_fill", "index_fill_", "copy_",
    "masked_scatter", "masked_scatter_", "scatter", "scatter_", "lift_fresh", "lift_fresh_copy", "clone",
    "_to_copy", "expand", "slice_scatter", "select_scatter", "diagonal_scatter", "fill_diagonal_",
})
# Ops that add or multiply many elements into one: an infinity they produce from a mask is no
# longer "a masked position" but a whole row, loss or product that is infinite.
_ACCUMULATING = frozenset({
    "sum", "mean", "nansum", "nanmean", "prod", "cumsum", "cumprod", "mm", "bmm", "addmm", "baddbmm",
    "addmv", "mv", "dot", "vdot", "matmul", "linear", "convolution", "_convolution", "einsum", "var",
    "std", "var_mean", "std_mean", "linalg_vector_norm", "norm", "_foreach_norm", "trace",
    "nll_loss_forward", "nll_loss2d_forward", "binary_cross_entropy", "mse_loss", "l1_loss",
    "smooth_l1_loss", "huber_loss", "kl_div", "logsumexp", "special_logsumexp",
})
# Accumulating ops with a term added element by element (broadcast) to the accumulated result:
# `baddbmm(bias, q, k)` is `bias + q @ k`. An infinity of the result that sits where that term
# already held the same infinity was inherited from it (an attention mask used as the bias of the
# scores), not made by the accumulation. Op base name -> positional index of that term.
_ADDED_TERM = {"addmm": 0, "baddbmm": 0, "addbmm": 0, "addmv": 0, "linear": 2}
# Ops that move, copy or rearrange values without computing new ones: their output is still the
# batch tensor they read (a library's `pad(labels, ...)[..., 1:].contiguous()` is the user's labels).
_DATA_MOVEMENT = frozenset({
    "clone", "contiguous", "_to_copy", "copy_", "constant_pad_nd", "pad", "cat", "stack", "index", "index_select",
    "gather", "masked_select", "roll", "flip", "repeat", "view", "_unsafe_view", "reshape", "slice", "select",
    "expand", "permute", "transpose", "t", "squeeze", "unsqueeze", "flatten", "narrow", "alias", "detach",
    "split", "split_with_sizes", "chunk", "unbind", "lift_fresh", "lift_fresh_copy",
})
# Dunder methods of Tensor and the aten op they dispatch to, for "did this op run inside a
# decomposition of the call?".
_DUNDER_OPS = {"__add__": "add", "__radd__": "add", "__iadd__": "add", "__sub__": "sub", "__rsub__": "rsub",
               "__isub__": "sub", "__mul__": "mul", "__rmul__": "mul", "__imul__": "mul", "__truediv__": "div",
               "__rtruediv__": "div", "__itruediv__": "div", "__pow__": "pow", "__rpow__": "pow", "__ipow__": "pow",
               "__matmul__": "mm", "__rmatmul__": "mm", "__neg__": "neg", "__abs__": "abs", "__getitem__": "index",
               "__setitem__": "index_put"}


def op_base(op_name: str) -> str:
    """'aten.index_put_.default' -> 'index_put_'."""
    parts = op_name.split(".")
    return parts[1] if len(parts) >= 2 else op_name


def public_name(func: Any) -> str:
    """The name a user writes for a torch callable: torch.logdet, torch.nn.functional.ctc_loss,
    torch.Tensor.pow."""
    name = getattr(func, "__name__", None) or str(func)
    qual = getattr(func, "__qualname__", "") or ""
    module = getattr(func, "__module__", None)
    if qual.startswith(("TensorBase.", "Tensor.")) or getattr(func, "__objclass__", None) in (torch.Tensor, torch._C.TensorBase):
        return f"torch.Tensor.{name}"
    if module in ("torch._C._nn", "torch.nn.functional"):
        return f"torch.nn.functional.{name}"
    if module in ("torch._C._linalg", "torch.linalg"):
        return f"torch.linalg.{name}"
    if module in ("torch._C._special", "torch.special"):
        return f"torch.special.{name}"
    if module and module.startswith("torch._C"):
        return f"torch.{name}"
    if module:
        return f"{module}.{name}"
    return name


def _inside_decomposition(call: str, op_name: str) -> bool:
    """The aten op is not what the call itself names: it ran inside the call's implementation."""
    called = call.rsplit(".", 1)[-1]
    called = _DUNDER_OPS.get(called, called)
    op = op_base(op_name)
    strip = lambda n: n.strip("_").removeprefix("linalg_").removesuffix("_")   # noqa: E731
    return strip(called) != strip(op) and not strip(op).startswith(strip(called))


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
    call: Optional[str] = None        # public torch call running when the op ran (see public_name)
    mask_source: Optional[OpRef] = None     # masked_input: where the consumed mask was set
    scalar_source: Optional[OpRef] = None   # reached a later op as a Python number via this op
    dropped_by: Optional[OpRef] = None      # forward: the first op that consumed these values into finite ones
    # The values were already non-finite when they reached this op from outside the traced ops:
    # "state" (a parameter or buffer of the model) or "data" (anything else the loop passed in:
    # a batch, targets, a constant). entered_input: which tensor input, entered_rows its bad rows.
    entered_from: Optional[str] = None
    entered_input: Optional[int] = None
    entered_rows: list[int] = field(default_factory=list)
    entered_ref: Any = None           # weakref to that tensor, for whoever knows where the data came from
    user_source_batch: Optional[str] = None   # user_source is the line that made this batch tensor

    def ref(self) -> OpRef:
        return OpRef(op=self.op, module=self.module, source=self.user_source or self.source)


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


def _looks_like_mask(t: torch.Tensor) -> bool:
    """A tensor from outside the traced ops that holds infinities the way a mask does: no NaN,
    and either every element infinite (a constant) or only negative infinities (a mask buffer).
    A tensor with no elements holds no infinity, so it is no mask (`x[empty_selection]`)."""
    if not t.is_floating_point() or t.numel() == 0 or bool(torch.isnan(t).any()):
        return False
    return bool(torch.isinf(t).all()) or _only_negative_inf(t)


def _inherits_added_term(base: str, args: tuple, bad_outputs: list) -> bool:
    """Every infinity of the output sits where the op's element-wise added term (see
    `_ADDED_TERM`), broadcast to the output, held the same infinity: the op carried a mask along."""
    position = _ADDED_TERM.get(base)
    if position is None or position >= len(args) or not isinstance(args[position], torch.Tensor):
        return False
    term = args[position]
    if not term.is_floating_point() or len(bad_outputs) != 1:
        return False
    out = bad_outputs[0][0]
    try:
        term = term.detach().broadcast_to(out.shape)
    except RuntimeError:
        return False
    infinite = torch.isinf(out)
    return bool((out[infinite] == term[infinite]).all())


def _storage_key(t: torch.Tensor) -> Optional[int]:
    """Shared by a tensor and every view of it (`labels.view(-1)`)."""
    try:
        return t.untyped_storage().data_ptr() or None
    except (RuntimeError, NotImplementedError):
        return None


def _mutated_args(func: Any) -> list[int]:
    schema = getattr(func, "_schema", None)
    if schema is None:
        return []
    return [i for i, arg in enumerate(schema.arguments) if arg.alias_info is not None and arg.alias_info.is_write]


def _qualified(model_name: Optional[str], path: str, qualified: bool) -> str:
    if not model_name:
        return path
    if not path:
        return model_name
    return f"{model_name}.{path}" if qualified else path


class OriginTracer(StepProbe):
    """Context manager that traces one step; a probe of `run_step`, which tells it each phase."""

    def __init__(self, model: torch.nn.Module, precision: str, step: int, model_name: Optional[str] = None,
                 qualified_modules: bool = False):
        """`model_name`: what the user's code calls the model (a training script's `netD`), the name
        of its root module, which is otherwise `""`; `qualified_modules`: its submodules' paths start
        with it too (`netD.main.2`: a script that trains several models)."""
        self.model = model
        self.precision = precision
        self.step = step
        self.phase = Phase.DATA.value
        self._module_stack: list[str] = []
        # Paths as the user wrote them: a wrapper's segment (Fabric's `_forward_module`, torch.compile's
        # `_orig_mod`) is not part of the user's module names.
        self._names = {id(m): _qualified(model_name, user_name(name), qualified_modules)
                       for name, m in model.named_modules()}
        self._handles: list[Any] = []
        self._provenance: dict[int, tuple[weakref.ref, Optional[_Root]]] = {}
        self._producers: dict[int, tuple[weakref.ref, OpRef]] = {}
        self.roots: list[_Root] = []
        self._count = 0
        self._dispatch = _DispatchShim(self)
        self._function = _FunctionShim(self)
        self._function_active = False
        self._recompute_depth = 0              # module calls open in a backward-time recompute
        self._recompute_entered = False        # the recompute put the function mode on the stack
        self._fast_path: Optional[torch.nn.Module] = None   # the module running with the function mode off
        self._fast_path_left = False                        # whether that call took the mode off the stack
        self._entered_call: Optional[torch.nn.Module] = None   # the call the tracer began inside (entered_call)
        self.fast_path_modules: list[str] = []   # modules let onto their fused fast path, in call order
        self._suspended = 0
        self._calls: list[str] = []            # public torch calls being run (outermost first)
        # Non-finite 0-dim tensors converted to Python numbers (`.item()`, `float(t)`):
        # (value, root of the tensor, the op that made the tensor).
        self._conversions: list[tuple[float, _Root, Optional[OpRef]]] = []
        self._state_ids: Optional[set[int]] = None
        # The failing step's batch tensors by storage: (tensor, the user's line that made it).
        self._batch_sites: dict[int, tuple[weakref.ref, str, SourceLocation]] = {}
        # Every traced op, counted; `on_each_op(count)`, when set, may end the trace by raising
        # (a replay's bound on a step that never reaches its end).
        self.ops_seen = 0
        self.on_each_op: Optional[Callable[[int], None]] = None

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

    def wants_batch_sources(self) -> bool:
        # Where the failing step's own batch tensors were made (the recorder notes only the
        # first step's): a label tensor emptied at step 2 names that step's line.
        return True

    def on_batch(self, batch: list) -> None:
        for name, t, source in batch:
            key = _storage_key(t)
            if source is not None and key is not None:
                self._batch_sites[key] = (weakref.ref(t), name, source)

    def _carry_batch_site(self, tensor_args: list[torch.Tensor], out_tensors: list[torch.Tensor]) -> None:
        entry = next((e for e in (self._batch_sites.get(_storage_key(t)) for t in tensor_args)
                      if e is not None and e[0]() is not None), None)
        if entry is None:
            return
        for t in out_tensors:
            key = _storage_key(t)
            if key is not None and key not in self._batch_sites:
                self._batch_sites[key] = (weakref.ref(t), entry[1], entry[2])

    def _batch_line(self, tensor_args: list[torch.Tensor]) -> tuple[Optional[str], Optional[SourceLocation]]:
        """(name, the user's line that made it) of a batch tensor this op read, itself or a view."""
        for t in tensor_args:
            entry = self._batch_sites.get(_storage_key(t))
            if entry is not None and entry[0]() is not None:
                return entry[1], entry[2]
        return None, None

    def set_phase(self, phase: Phase) -> None:
        self.phase = phase.value
        # The function mode tags grad nodes while the forward graph is built and names the
        # public call of each op; the backward pass runs in the engine, where neither applies.
        self._set_function_mode(phase != Phase.BACKWARD)

    def _set_function_mode(self, on: bool) -> None:
        if on and not self._function_active:
            self._function.__enter__()
            self._function_active = True
        elif not on and self._function_active:
            if not self._function_on_stack():
                # Called from inside the mode's own handler (`loss.backward()` is a torch function):
                # torch has taken the mode off the stack until the call returns, so the backward
                # pass already runs without it, and it comes back for what follows (clipping).
                return
            leave_function_mode(self._function)
            self._function_active = False

    def _function_on_stack(self) -> bool:
        return function_mode_on_stack(self._function)

    def entered_call(self, module: torch.nn.Module) -> None:
        """The tracer began inside a call of `module` (a training script's re-run begins at the
        model's call, possibly from one of its own forward pre-hooks, after torch took the list of
        hooks to run): the module is on the stack whether or not this tracer's pre-hook runs."""
        name = self._names.get(id(module))
        if name is not None:
            self._module_stack.append(name)
            self._entered_call = module

    def _push(self, module: torch.nn.Module, args: Any) -> None:
        if module is self._entered_call:
            self._entered_call = None           # its pre-hook runs after all: on the stack already
        else:
            self._module_stack.append(self._names.get(id(module), type(module).__name__))
        if self._fast_path is None and self._function_active and may_take_fast_path(module):
            # nn.MultiheadAttention / TransformerEncoderLayer leave their fused fast path when any
            # torch function mode is active ("some Tensor argument has_torch_function"), and the
            # fast path is what the recorded run took (it makes NaN of a fully padded row where
            # the slow path makes zeros). Step the function mode aside for this call: the
            # dispatch mode still sees the fused op; no autograd node is made here to tag.
            self._fast_path = module
            self.fast_path_modules.append(self._module_stack[-1])
            # Off the stack already when this call runs inside the mode's own handler: nothing to put back.
            self._fast_path_left = leave_function_mode(self._function)
            return
        if self._recompute_depth or (self.phase == Phase.BACKWARD.value and torch.is_grad_enabled()):
            # A module called with gradients on during backward: activation checkpointing
            # recomputing its forward. Reentrant checkpointing backpropagates through this new
            # graph, so its nodes need the tags (module, user line) the first forward's got.
            # The mode may be off the stack while `_function_active` says on: a backward started
            # from inside the mode's own handler (`loss.backward()` is a torch function, and
            # `nandoctor run` switches the phase from within it) runs with torch holding the mode
            # aside, so what counts is the stack.
            if self._recompute_depth == 0:
                self._recompute_entered = not self._function_on_stack()
                if self._recompute_entered:
                    self._function.__enter__()
            self._recompute_depth += 1

    def _pop(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._entered_call is module:
            self._entered_call = None
        if self._module_stack:
            self._module_stack.pop()
        if self._fast_path is module:
            self._fast_path = None
            if self._fast_path_left and self._function_active and not self._function_on_stack():
                self._function.__enter__()
            return
        if self._recompute_depth:
            self._recompute_depth -= 1
            if self._recompute_depth == 0 and self._recompute_entered:
                self._recompute_entered = False
                leave_function_mode(self._function)

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
        self.ops_seen += 1
        if self.on_each_op is not None:
            self.on_each_op(self.ops_seen)
        flat_args, _ = tree_flatten((args, kwargs))
        tensor_args = [a for a in flat_args if isinstance(a, torch.Tensor)]
        bad_scalars = [a for a in flat_args if isinstance(a, float) and not math.isfinite(a)]
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

        op_name = str(func)
        base = op_base(op_name)
        if base in ("_local_scalar_dense", "item"):
            self._remember_conversion(tensor_args, out)
            return out
        out_tensors = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if self._batch_sites and base in _DATA_MOVEMENT:
            self._carry_batch_site(tensor_args, out_tensors)
        where = self._where()
        for t in out_tensors:
            self._producers[id(t)] = (weakref.ref(t), OpRef(op=op_name, module=where[0], source=where[2] or where[1]))
        bad_outputs = [(t, *_nonfinite(t)) for t in out_tensors]
        bad_outputs = [(t, n, i) for t, n, i in bad_outputs if n or i]
        if not bad_outputs:
            if bad_inputs and self.phase in (Phase.FORWARD.value, Phase.LOSS.value):
                self._note_dropped(bad_inputs, out_tensors, op_name, where)
            return out
        self._count += 1
        # In a backward pass (where[3]: the forward call that made the node) the public call on
        # the stack is the `.backward()` that launched it, not the op's own.
        call = self._calls[0] if self._calls and where[3] is None else None
        new = dict(func=func, op_name=op_name, args=args, kwargs=kwargs, tensor_args=tensor_args, before=before,
                   bad_outputs=bad_outputs, where=where, call=call)
        out_nan = any(n for _, n, _ in bad_outputs)
        in_nan = any(n for _, n, _ in bad_inputs)

        # Where each non-finite input's values were born; masks and accidents apart.
        accidents: list[_Root] = []
        masks: list[_Root] = []
        unknown_accident = False
        entered: Optional[torch.Tensor] = None
        for t, has_nan, _ in bad_inputs:
            root = self._root_of(t)
            if root is None:
                if not has_nan and _looks_like_mask(t):
                    # A pre-existing infinite constant or buffer (torch.tensor(-inf), a causal mask).
                    masks.append(self._new_root(**new, intentional=True))
                else:
                    unknown_accident = True
                    entered = t if entered is None else entered
            elif root.intentional:
                masks.append(root)
            else:
                accidents.append(root)
        # A non-finite Python number: a NaN/Inf that left a tensor through `.item()`, or a
        # constant the user wrote (a mask when a mask-setting op writes it).
        direct = call is None or not _inside_decomposition(call, op_name)
        for value in bad_scalars:
            converted = self._conversion_for(value) if direct else None
            if converted is not None:
                accidents.append(converted)
            elif math.isinf(value) and base in _MASK_SETTERS:
                masks.append(None)     # the mask is set by this very op: see below
            else:
                unknown_accident = True

        if unknown_accident:
            # A non-finite value from outside the traced ops: the state itself (a parameter
            # loaded as NaN), a NaN constant, or a non-finite number (lr=inf through alpha=).
            accident = self._new_root(**new, masked=False, preexisting=bool(bad_inputs))
            if entered is not None:
                self._note_entry(accident, entered, tensor_args)
            accidents.append(accident)
        if accidents:
            root = min(accidents, key=lambda r: r.index)
        elif not masks:
            root = self._new_root(**new, intentional=self._deliberate_birth(bad_outputs, tensor_args))
        else:
            known_masks = [m for m in masks if m is not None]
            inherited = not out_nan and _inherits_added_term(base, args, bad_outputs)
            if (out_nan and not in_nan) or (base in _ACCUMULATING and not inherited):
                # A mask consumed into NaN (all-masked softmax row, 0 * -inf) or into an unmasked
                # infinity (a sum over masked log-probabilities): the origin.
                root = self._new_root(**new, masked=True, mask_roots=known_masks)
            elif base in _MASK_SETTERS or not known_masks:
                root = self._new_root(**new, intentional=True)
            else:
                root = min(known_masks, key=lambda r: r.index)     # a mask carried along
        for t, _, _ in bad_outputs:
            self._set_root(t, root)
        for i in mutated:
            if i < len(args) and isinstance(args[i], torch.Tensor) and any(args[i] is t for t, _, _ in bad_outputs):
                base_tensor = args[i]._base
                earlier = self._root_of(base_tensor) if base_tensor is not None else None
                # `x[..., :k] = v` writes into x through a view; the first write names x's mask.
                if base_tensor is not None and not (earlier is not None and earlier.intentional and root.intentional):
                    self._set_root(base_tensor, root)
        return out

    def _note_entry(self, root: _Root, t: torch.Tensor, tensor_args: list[torch.Tensor]) -> None:
        """Where a value that was non-finite before the step came from: the model's state, or
        the data the loop handed in (which rows, along dim 0: the samples)."""
        if self._state_ids is None:
            self._state_ids = {id(x) for x in list(self.model.parameters()) + list(self.model.buffers())}
        base = t._base if t._base is not None else t
        root.entered_from = "state" if id(t) in self._state_ids or id(base) in self._state_ids else "data"
        root.entered_input = next((i for i, a in enumerate(tensor_args) if a is t), None)
        root.entered_ref = weakref.ref(t)
        if root.entered_from == "data":
            root.entered_rows = stats.nonfinite_rows(t)

    def _note_dropped(self, bad_inputs: list, out_tensors: list[torch.Tensor], op_name: str, where: tuple) -> None:
        """A floating output made finite from non-finite inputs: this op dropped the non-finite
        elements (torch.where's other branch, masked_fill, a loss picking other classes). The
        forward value never used them; only their gradient can still be NaN."""
        if not any(t.is_floating_point() for t in out_tensors):
            return      # a comparison or isfinite test reads the values, it does not drop them
        for t, _, _ in bad_inputs:
            root = self._root_of(t)
            if root is not None and not root.intentional and root.dropped_by is None:
                root.dropped_by = OpRef(op=op_name, module=where[0], source=where[2] or where[1])

    def _set_root(self, t: torch.Tensor, root: _Root) -> None:
        self._provenance[id(t)] = (weakref.ref(t), root)

    def _remember_conversion(self, tensor_args: list[torch.Tensor], value: Any) -> None:
        if not tensor_args or not isinstance(value, float) or math.isfinite(value):
            return
        t = tensor_args[0]
        root = self._root_of(t)
        if root is None or root.intentional:
            return
        entry = self._producers.get(id(t))
        producer = entry[1] if entry is not None and entry[0]() is t else root.ref()
        self._conversions.append((value, root, producer))

    def _conversion_for(self, value: float) -> Optional[_Root]:
        """The root of a converted 0-dim tensor that explains a non-finite Python number: an
        equal infinity, or for NaN the first conversion (NaN, or inf - inf in Python)."""
        if not self._conversions:
            return None
        match = next((c for c in self._conversions if c[0] == value), None)
        if match is None and math.isnan(value):
            match = next((c for c in self._conversions if math.isnan(c[0])), self._conversions[0])
        if match is None:
            return None
        _, root, producer = match
        if root.scalar_source is None:
            root.scalar_source = producer
        return root

    def _deliberate_birth(self, bad_outputs: list, tensor_args: list[torch.Tensor]) -> bool:
        """Only negative infinities made from finfo.min-sized values (a min-value mask cast to a
        narrower dtype, or `finfo.min + finfo.min`)."""
        if any(n for _, n, _ in bad_outputs) or not all(_only_negative_inf(t) for t, _, _ in bad_outputs):
            return False
        first_out = bad_outputs[0][0]
        limit = torch.finfo(first_out.dtype).max * 0.5 if first_out.is_floating_point() else math.inf
        return any(t.is_floating_point() and t.numel() and float(t.detach().abs().amax()) >= limit
                   for t in tensor_args)

    def _root_of(self, t: torch.Tensor) -> Optional[_Root]:
        for candidate in (t, t._base):
            if candidate is None:
                continue
            entry = self._provenance.get(id(candidate))
            if entry is not None and entry[0]() is candidate:
                return entry[1]
        return None

    def _where(self) -> tuple[str, Optional[SourceLocation], Optional[SourceLocation], Optional[str]]:
        """(module, source, user_source, forward_op) of the op being dispatched."""
        # A backward pass run inside the forward phase (a GAN's discriminator step inside
        # training_step) is a backward all the same: the engine is running a node.
        node = torch._C._current_autograd_node()
        if self.phase == Phase.BACKWARD.value or node is not None:
            if node is not None:
                try:
                    tag = node.metadata.get(_TAG)
                except RuntimeError:
                    tag = None
                # A built-in derivative formula runs no Python, so the forward call that made
                # the node is the place to show. Python code running in backward (a custom
                # autograd.Function's backward, a tensor hook) is the user's own: its line wins.
                here, here_user = stack_locations()
                if here_user is not None and _from_builtin_derivative():
                    # The user frame is the one that called .backward() (inside training_step):
                    # the launcher of the pass, not code running in it.
                    here, here_user = None, None
                if tag is not None:
                    module, name, source, user = tag
                    if here_user is not None:
                        return module, here, here_user, name
                    return module, source, user, name
                if here_user is not None:
                    return "", here, here_user, node.name()
                return "", None, None, node.name()
        source, user = stack_locations()
        module = self._module_stack[-1] if self._module_stack else ""
        return module, source, user, None

    def _new_root(self, func: Any, op_name: str, args: tuple, kwargs: dict, tensor_args: list[torch.Tensor],
                  before: dict[int, torch.Tensor], bad_outputs: list, where: tuple, call: Optional[str],
                  masked: bool = False, preexisting: bool = False, intentional: bool = False,
                  mask_roots: Optional[list[_Root]] = None) -> _Root:
        module, source, user, forward_op = where
        batch_name = None
        if (user is None and forward_op is None and not intentional and self.phase in (Phase.FORWARD.value, Phase.LOSS.value)
                and not any(any(_nonfinite(t)) for t in tensor_args)):
            # No user frame on the stack: nandoctor called an installed package's model (a
            # Hugging Face model computing its own loss), and this op made the values non-finite
            # from finite inputs. The user's code that fed it is the batch: the line that made
            # the batch tensor it read (`labels[:] = -100`).
            batch_name, user = self._batch_line(tensor_args)
        first_out = bad_outputs[0][0]
        kind = "nan" if any(n for _, n, _ in bad_outputs) else "inf"
        mask_ids = set()
        for t in tensor_args:
            r = self._root_of(t)
            if (r is not None and r.intentional) or (r is None and _looks_like_mask(t)):
                mask_ids.add(id(t))
        inputs: list[TensorSummary] = []
        if not intentional:
            for i, t in enumerate(tensor_args[:6]):
                shown = before.get(i, t) if i < len(args) and args[i] is t else t
                summary = _summary(f"input{i}", shown)
                summary.masked = id(t) in mask_ids
                inputs.append(summary)
            scalars = [("scalar", a) for a in tree_flatten(args)[0]]
            scalars += [(key, a) for key, a in kwargs.items()]
            for name, a in [(n, a) for n, a in scalars if isinstance(a, (int, float)) and not isinstance(a, bool)][:4]:
                inputs.append(TensorSummary(name=name, shape=[], dtype=type(a).__name__, value=float(a)))
        producer = None
        if tensor_args:
            entry = self._producers.get(id(tensor_args[0]))
            if entry is not None and entry[0]() is tensor_args[0]:
                producer = entry[1]
        mutated = _mutated_args(func)
        target = args[mutated[0]] if mutated and mutated[0] < len(args) and isinstance(args[mutated[0]], torch.Tensor) else first_out
        mask_source = None
        if masked and mask_roots:
            mask_source = min(mask_roots, key=lambda r: r.index).ref()
        root = _Root(index=self._count, phase=Phase.BACKWARD.value if where[3] is not None else self.phase, op=op_name, kind=kind, module=module, source=source,
                     user_source=user, forward_op=forward_op, intentional=intentional, masked_input=masked,
                     inputs=inputs, output=None if intentional else _summary("output", first_out),
                     producer=producer, target_id=id(target),
                     call=call if call is not None and _inside_decomposition(call, op_name) else None,
                     mask_source=mask_source, user_source_batch=batch_name)
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
            reproduced=True, surfaced_in=surfaced_in, call=root.call, mask_source=root.mask_source,
            scalar_source=root.scalar_source, dropped_by=root.dropped_by, entered_from=root.entered_from,
            user_source_batch=root.user_source_batch)
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


def _from_builtin_derivative() -> bool:
    """Whether the op being dispatched comes from a built-in derivative formula run by the autograd
    engine (no Python between the engine and the op) rather than from Python running in backward
    (a hook, a custom Function's backward)."""
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_engine_run_backward":
            return True
        if not is_library(code.co_filename):
            return False
        frame = frame.f_back
    return False




class _FunctionShim(TorchFunctionMode):
    def __init__(self, tracer: OriginTracer):
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.tracer._calls.append(public_name(func))
        try:
            out = func(*args, **(kwargs or {}))
        finally:
            self.tracer._calls.pop()
        if torch.is_grad_enabled():
            self.tracer.tag_nodes(func, out)
        return out
