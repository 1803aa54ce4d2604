"""On-device reductions of tensors. The only place where tensor statistics are computed.

Every function returns device tensors and never calls .item(): the recorder stacks the rows
of a whole step and moves them to the host in one transfer, so recording adds no host
synchronisation per module or per op.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Iterator, NamedTuple, Optional

import torch

# Columns of an activation/gradient row. max |x| is NaN for a tensor holding NaN and inf for
# one holding +-inf, so it also says whether the tensor holds NaN or Inf; exact NaN/Inf counts
# are taken only for the failing op, in the replay.
ROW = ("max_abs", "norm", "nonzero")
ROW_WIDTH = len(ROW)

# The most tensor memory one batch of reductions holds at once: tensors wait in a batch until it
# reaches this size, then one handful of kernels per shape reduces them all. Output gradients
# waiting in a batch outlive their backward op, so this is also what recording adds to the
# peak memory of a backward.
BATCH_BYTES = 2 << 20

# The most memory one stacked copy of a batch's equally shaped tensors takes (`batch_rows`): a
# batch is reduced a few megabytes at a time, so the copy stays small next to the activations
# themselves and the allocator can reuse it from step to step (a copy as large as a whole batch
# adds its size to the process's peak memory).
STACK_BYTES = 1 << 20


def iter_tensors(obj: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (path, tensor) for every tensor inside tuples, lists, dicts, dataclasses and
    Hugging Face ModelOutputs (which are both dicts and dataclasses)."""
    if depth > 6:
        return
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from iter_tensors(value, f"{prefix}[{key!r}]", depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from iter_tensors(value, f"{prefix}[{i}]", depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from iter_tensors(getattr(obj, f.name), f"{prefix}.{f.name}", depth + 1)


def in_functorch_transform() -> bool:
    """True inside torch.func.vmap / grad / jvp (per-sample gradients, ensembles). Tensors there
    are wrapped per transform level: a reduction that outlives the transform (stacked after it
    returns) hits "maybe_level.has_value() INTERNAL ASSERT FAILED", and the fused foreach kernels
    have no batching rule. Recording degrades to what is possible: nothing inside the transform,
    the gradients and parameters it produces are still checked outside it."""
    try:
        return torch._C._functorch.peek_interpreter_stack() is not None
    except AttributeError:        # a torch without functorch's interpreter stack
        return False


def is_transform_wrapped(t: torch.Tensor) -> bool:
    """A tensor made inside a functorch transform (batched or grad-tracking), escaped or not."""
    try:
        return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))
    except (AttributeError, TypeError):
        return False


def state_tensors(tree: Any) -> list[torch.Tensor]:
    """Every tensor of a state_dict-like tree (dicts, lists, tuples), however deep: a snapshot
    sizes or saves all of them (iter_tensors stops at depth 6 and names each path)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for value in tree.values() for t in state_tensors(value)]
    if isinstance(tree, (list, tuple)):
        return [t for value in tree for t in state_tensors(value)]
    return []


def floating_tensors(obj: Any) -> list[torch.Tensor]:
    """The non-empty floating (or complex) tensors of `iter_tensors(obj)`, in its order. Walked
    without iter_tensors' path strings and generators: the guard calls it on every step's batch."""
    found: list[torch.Tensor] = []
    _collect_floating(obj, found, 0)
    return found


def _collect_floating(obj: Any, found: list[torch.Tensor], depth: int) -> None:
    if depth > 6:
        return
    if isinstance(obj, torch.Tensor):
        if (obj.is_floating_point() or obj.is_complex()) and obj.numel() > 0:
            found.append(obj)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _collect_floating(value, found, depth + 1)
    elif type(obj) is dict or isinstance(obj, Mapping):     # (a plain dict skips the ABC's check)
        for value in obj.values():
            _collect_floating(value, found, depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _collect_floating(getattr(obj, f.name), found, depth + 1)


class grad_off:
    """`torch.no_grad()` for the guard's per-step reductions, without its ~8 Python calls a use
    (a constructor, a scripting check, a second context object): on a model whose step is a few
    milliseconds, the guard's own Python shows. Not a decorator; one instance per `with`."""
    __slots__ = ("_previous",)

    def __enter__(self) -> None:
        self._previous = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)

    def __exit__(self, *exc: Any) -> None:
        torch._C._set_grad_enabled(self._previous)


UNMEASURED = -1.0   # norm / nonzero of a step that only took min/max


def row_width(full: bool) -> int:
    """Columns of a row as reduced on the device: a cheap row holds only max |x|."""
    return ROW_WIDTH if full else 1


def padded_row(values: list[float]) -> list[float]:
    """A host row with every ROW column; the columns a cheap row did not measure are UNMEASURED."""
    return values + [UNMEASURED] * (ROW_WIDTH - len(values))


def tensor_row(x: torch.Tensor, full: bool = True) -> torch.Tensor:
    """[max |x|, ||x||_2, #nonzero] of one tensor as a float32 device tensor; with full=False
    only [max |x|] (NaN/Inf presence, headroom). The reference for `batch_rows`."""
    return batch_rows([x], full)[0]


def batch_rows(tensors: list[torch.Tensor], full: bool = True) -> torch.Tensor:
    """One row per tensor, [n, row_width(full)] float32 (float64 if any tensor is) on the first
    tensor's device, computed with a fixed handful of kernels per group of equally sized tensors
    however many tensors there are (per-tensor reductions cost one kernel launch, and one
    parallel region, per module and step otherwise)."""
    with grad_off():
        return _grouped_rows([t.abs() if t.is_complex() else t for t in tensors], full)


def _stacks(tensors: list[torch.Tensor]) -> Iterator[tuple[list[int], Optional[torch.Tensor]]]:
    """(indices, [k, numel] matrix) for the tensors of one shape, dtype and device, stacked at
    most STACK_BYTES at a time (a tensor above STACK_BYTES alone, as a view: no copy); the
    matrix is None for empty tensors. On CPU a `_foreach_*` reduction still runs one small
    kernel per tensor; one reduction along the rows of a matrix of a repeated layer's tensors
    costs about as much as a few of them (a reduction over several trailing dimensions instead
    of one is several times slower: hence the reshape)."""
    for members in _shape_groups(tensors).values():
        if tensors[members[0]].numel() == 0:
            yield members, None
        else:
            yield from _stacked(tensors, members)


def shape_stacks(tensors: list[torch.Tensor]) -> Iterator[tuple[list[int], Optional[torch.Tensor]]]:
    """(indices, [k, numel] matrix) per group of equally shaped tensors, STACK_BYTES at a time
    (see `_stacks`): an elementwise statistic of a whole model in a handful of kernels per shape,
    where a `_foreach_*` op runs one kernel per tensor on the CPU. A single tensor's matrix is a
    view of it, not a copy."""
    return _stacks(tensors)


def _shape_groups(tensors: list[torch.Tensor]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.shape, t.dtype, t.device), []).append(i)
    return groups


def _stacked(tensors: list[torch.Tensor], members: list[int]) -> Iterator[tuple[list[int], torch.Tensor]]:
    numel = tensors[members[0]].numel()
    per_stack = max(1, STACK_BYTES // (numel * tensors[members[0]].element_size()))
    for begin in range(0, len(members), per_stack):
        chunk = members[begin:begin + per_stack]
        stacked = torch.stack([tensors[i] for i in chunk]) if len(chunk) > 1 else tensors[chunk[0]]
        yield chunk, stacked.reshape(len(chunk), numel)
        del stacked         # one stacked copy alive at a time (the caller drops its own)


def _in_order(order: list[int], columns: list[list[torch.Tensor]], device: torch.device,
              dtype: torch.dtype) -> torch.Tensor:
    """[n, len(columns)] from per-stack column pieces, rows put back in the tensors' order."""
    joined = [(c[0] if len(c) == 1 else torch.cat([v.to(device) for v in c])).to(device, dtype) for c in columns]
    rows = torch.stack(joined, dim=1) if len(joined) > 1 else joined[0].unsqueeze(1)
    if order != list(range(len(order))):
        rows = torch.empty_like(rows).index_copy_(0, torch.tensor(order, device=device), rows)
    return rows


def _accumulator(dtype: torch.dtype) -> Optional[torch.dtype]:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else None


def _grouped_rows(tensors: list[torch.Tensor], full: bool) -> torch.Tensor:
    """Rows of equally shaped tensors reduced together (`_stacks`): max |x|, and on full rows
    the L2 norm and the non-zero count (the 0-"norm": NaN counts, -0.0 does not)."""
    if len(tensors) == 1:
        return _one_row(tensors[0], full)
    device = tensors[0].device
    out_dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    order: list[int] = []
    columns: list[list[torch.Tensor]] = [[] for _ in range(row_width(full))]
    for chunk, matrix in _stacks(tensors):
        order += chunk
        if matrix is None:
            for column in columns:
                column.append(torch.zeros(len(chunk), dtype=out_dtype, device=device))
            continue
        # Two passes and no |x| copy (aminmax along rows is ~20x slower on CPU); amax, amin and
        # maximum propagate NaN.
        columns[0].append(torch.maximum(matrix.amax(dim=1), matrix.amin(dim=1).neg()))
        if full:
            acc = _accumulator(matrix.dtype)
            columns[1].append(torch.linalg.vector_norm(matrix, 2.0, dim=1, dtype=acc))
            columns[2].append(torch.linalg.vector_norm(matrix, 0.0, dim=1, dtype=acc))
        del matrix
    return _in_order(order, columns, device, out_dtype)


def _one_row(t: torch.Tensor, full: bool) -> torch.Tensor:
    """`_grouped_rows` of a single tensor."""
    return parts_to_rows([row_parts(t, full)], full)


def row_parts(t: torch.Tensor, full: bool) -> tuple[torch.Tensor, ...]:
    """The reductions of one tensor that must happen now (before it can change in place), as
    0-dim device tensors: max, min and, for a full row, the L2 norm and non-zero count. The
    fewest ops per tensor; `parts_to_rows` turns many of them into rows at once."""
    with grad_off():
        if t.is_complex():
            t = t.abs()
        if t.numel() == 0:
            zero = torch.zeros((), dtype=t.dtype, device=t.device)
            return (zero,) * (4 if full else 2)
        if not full:
            return t.amax(), t.amin()
        acc = torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else None
        return (t.amax(), t.amin(), torch.linalg.vector_norm(t, 2.0, dtype=acc),
                torch.linalg.vector_norm(t, 0.0, dtype=acc))


def parts_to_rows(parts: list[tuple[torch.Tensor, ...]], full: bool) -> torch.Tensor:
    """[n, row_width(full)] rows (float32, float64 if any part is) from n tensors' `row_parts`,
    all on one device, in a fixed handful of ops."""
    with grad_off():
        columns = [torch.stack(c) for c in zip(*parts)]      # stack promotes mixed dtypes
        out_dtype = torch.float64 if any(c.dtype == torch.float64 for c in columns) else torch.float32
        maxima = torch.maximum(columns[0], columns[1].neg())
        if not full:
            return maxima.to(out_dtype).unsqueeze(1)
        return torch.stack([maxima.to(out_dtype), columns[2].to(out_dtype), columns[3].to(out_dtype)], dim=1)


def combine_rows(rows: list[list[float]]) -> list[float]:
    """Host side: one row for a module whose output is several tensors: max of max |x| (NaN
    wins), norm of norms, summed non-zero counts."""
    if len(rows) == 1:
        return list(rows[0])
    maxes = [r[0] for r in rows]
    out = [math.nan if any(math.isnan(m) for m in maxes) else max(maxes)]
    if len(rows[0]) > 1:
        out += [math.sqrt(sum(r[1] * r[1] for r in rows)), sum(r[2] for r in rows)]
    return out


def row_facts(row: list[float], numel: float, scale: float = 1.0) -> dict[str, float]:
    """Host side of a row: max|x|, norm, NaN/Inf presence (0 or 1), share of exact zeros."""
    max_abs, norm, nonzero = padded_row(list(row[:ROW_WIDTH]))
    has_nan = math.isnan(max_abs)
    has_inf = math.isinf(max_abs)
    measured = nonzero != UNMEASURED
    return {"max_abs": max_abs / scale,
            "norm": norm / scale if measured else None, "nan": float(has_nan), "inf": float(has_inf),
            "zero_frac": (numel - nonzero) / max(numel, 1.0) if measured else None}


# Equally shaped tensors are stacked for a norm only when there are this many of them: a stack,
# a norm, a concatenation and an index cost about as much as eight per-tensor kernels.
MIN_STACK = 8


def foreach_norms(tensors: list[torch.Tensor], ord: float = 2.0) -> torch.Tensor:
    """Per-tensor norms as a float32 vector (float64 if any tensor is; empty list -> empty
    vector; an empty tensor -> 0), accumulated in float32 for 16-bit tensors. On the CPU, where
    `_foreach_norm` is a loop of one kernel per tensor, groups of MIN_STACK or more equally
    shaped tensors are stacked (`_stacked`) and reduced in one kernel each; the rest, and other
    devices (whose `_foreach_norm` is fused), take one `_foreach_norm`."""
    if not tensors:
        return torch.zeros(0)
    if any(t.device.type != "cpu" for t in tensors):
        return _fused_norms(tensors, ord)
    out_dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    order: list[int] = []
    column: list[torch.Tensor] = []
    rest: list[int] = []
    with grad_off():
        for members in _shape_groups(tensors).values():
            if len(members) < MIN_STACK or tensors[members[0]].numel() == 0:
                rest += members
                continue
            for chunk, matrix in _stacked(tensors, members):
                order += chunk
                column.append(torch.linalg.vector_norm(matrix, ord, dim=1, dtype=_accumulator(matrix.dtype)))
                del matrix
        if rest:
            rest.sort()
            order += rest
            column.append(_fused_norms([tensors[i] for i in rest], ord))
        return _in_order(order, [column], tensors[0].device, out_dtype).reshape(-1)


def _fused_norms(tensors: list[torch.Tensor], ord: float = 2.0) -> torch.Tensor:
    """Per-tensor norms in one `_foreach_norm` call per device, as a float32 vector (float64 for
    float64 tensors)."""
    if math.isinf(ord) and any(t.numel() == 0 for t in tensors):
        # The inf-norm of an empty tensor has no identity, so torch raises; its max |x| is 0.
        full = [i for i, t in enumerate(tensors) if t.numel()]
        out = torch.zeros(len(tensors), dtype=torch.float32, device=tensors[0].device)
        if full:
            out[full] = _fused_norms([tensors[i] for i in full], ord).to(out.device, torch.float32)
        return out
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    acc = torch.float32 if any(t.dtype in (torch.float16, torch.bfloat16) for t in tensors) else None
    if acc is not None and any(t.dtype == torch.float64 for t in tensors):
        return torch.stack([_fused_norms([t], ord)[0].to(torch.float64) for t in tensors])
    if len(by_device) == 1:
        norms = torch._foreach_norm(tensors, ord, dtype=acc)
        return torch.stack(list(norms))
    out = torch.zeros(len(tensors), dtype=torch.float32, device=tensors[0].device)
    for device, idx in by_device.items():
        norms = torch._foreach_norm([tensors[i] for i in idx], ord, dtype=acc)
        out[idx] = torch.stack(list(norms)).to(out.device)
    return out


class _NormPlan(NamedTuple):
    stacked: list[list[int]]            # indices normed as one stack per shape
    rest: list[int]                     # indices normed one kernel each
    inverse: Optional[torch.Tensor]     # back to the list's order (None: already in order)
    direct: bool                        # nothing stacked, all float32: one plain _foreach_norm


class GroupedNorms:
    """Per-tensor L2 norms of a list that keeps its layout from step to step (a model's gradients,
    its weights), as `foreach_norms` returns them, in fewer kernels on the CPU.

    On the CPU `_foreach_norm` is a loop of one norm kernel per tensor, ~1.5-4 us each: a model of
    1000 small modules pays milliseconds per call for ~4 MB of data. Tensors of at most
    STACK_NUMEL elements that share shape and dtype (the same layer repeated) are stacked and
    reduced along one dimension instead, one copy and one kernel per shape (for MIN_GROUP or more
    of them); larger tensors keep their own kernel, whose fixed cost their data outweighs. The
    grouping is planned once per list length; a stale plan is still exact (a group whose shapes
    no longer match makes `stack` raise, and the plan is made again). Other devices use
    `foreach_norms` (CUDA's is fused)."""

    STACK_NUMEL = 4096
    MIN_GROUP = 8        # a stack, a norm, a concatenation and an index cost ~8 per-tensor kernels

    def __init__(self) -> None:
        self._plans: dict[int, _NormPlan] = {}

    def __call__(self, tensors: list[torch.Tensor], stacked: bool = True) -> Any:
        """stacked=False: a caller that reads the norms on the host may get them as a tuple of
        0-dim tensors instead (`as_vector` stacks it): the stack of a few scalars is ~30 us of
        a real step, cold, more than reading them one by one."""
        if not tensors or tensors[0].device.type != "cpu":
            return foreach_norms(tensors)
        plan = self._plans.get(len(tensors))
        if plan is None:
            plan = self._plans[len(tensors)] = self._plan(tensors)
        try:
            return self._norms(tensors, plan, stacked)
        except RuntimeError:          # shapes or devices moved under a plan: plan again
            plan = self._plans[len(tensors)] = self._plan(tensors)
            return self._norms(tensors, plan, stacked)

    def _plan(self, tensors: list[torch.Tensor]) -> "_NormPlan":
        groups: dict[Any, list[int]] = {}
        rest: list[int] = []
        for i, t in enumerate(tensors):
            if 0 < t.numel() <= self.STACK_NUMEL and t.device.type == "cpu" and t.is_floating_point():
                groups.setdefault((tuple(t.shape), t.dtype), []).append(i)
            else:
                rest.append(i)
        stacked = [g for g in groups.values() if len(g) >= self.MIN_GROUP]
        rest = sorted(rest + [i for g in groups.values() if len(g) < self.MIN_GROUP for i in g])
        order = [i for g in stacked for i in g] + rest
        inverse = None
        if order != list(range(len(tensors))):
            inverse = torch.empty(len(tensors), dtype=torch.long)
            inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(tensors))
        direct = not stacked and all(t.dtype == torch.float32 for t in tensors)
        return _NormPlan(stacked, rest, inverse, direct)

    @staticmethod
    def _norms(tensors: list[torch.Tensor], plan: "_NormPlan", stack: bool = True) -> Any:
        stacked, rest, inverse, direct = plan
        if not stacked:
            # Nothing worth stacking (a few large tensors): one _foreach_norm, without
            # foreach_norms' own regrouping (~25 us a call on a 6-parameter model). All float32
            # (the planned dtypes, re-checked at both ends of the list: a model cast to half
            # after planning must not be normed in half): not even _fused_norms' per-tensor scans.
            with grad_off():
                if direct and tensors[0].dtype == torch.float32 and tensors[-1].dtype == torch.float32:
                    norms = torch._foreach_norm(tensors)
                    return torch.stack(norms) if stack else norms
                return _fused_norms(tensors)
        parts = []
        with grad_off():
            for group in stacked:
                rows = torch.stack([tensors[i] for i in group]).reshape(len(group), -1)
                half = rows.dtype in (torch.float16, torch.bfloat16)
                parts.append(torch.linalg.vector_norm(rows, dim=1, dtype=torch.float32 if half else None))
            if rest:
                parts.append(_fused_norms([tensors[i] for i in rest]))
            out = torch.cat(parts) if len(parts) > 1 else parts[0]
        return out if inverse is None else out[inverse]


def as_vector(norms: Any) -> torch.Tensor:
    """Per-tensor norms as one vector, whichever form `GroupedNorms` gave them in."""
    return torch.stack(norms) if isinstance(norms, (tuple, list)) else norms


def nonfinite_witness(tensors: list[torch.Tensor], exact: bool = True) -> Optional[torch.Tensor]:
    """A scalar on the first tensor's device that is non-finite when some tensor holds NaN or Inf
    (None for an empty list): one cheap reduction per tensor, not a max |x|.

    exact (float64): non-finite exactly then. A float64 sum of 16- or 32-bit values cannot
    overflow (|x| < 3.4e38, fewer than 2**63 elements), so it is non-finite only through a NaN or
    an Inf. A float64 tensor's own sum could overflow: its `x - x` (0 where finite, NaN
    elsewhere) is summed instead.

    Not exact (float32): the same sums accumulated in float32, 4-5x faster on the CPU (a
    256x256 batch: 4 us against 18 us hot, ~0.2 ms of a real 9 ms step cold). Values beyond
    ~1e34 can overflow them: a non-finite result must be confirmed (`holds_nonfinite`)."""
    if not tensors:
        return None
    device = tensors[0].device
    accumulate = torch.float64 if exact else torch.float32
    parts = []
    with grad_off():
        for t in tensors:
            if t.is_complex():
                t = torch.view_as_real(t)
            if t.numel() == 0:
                continue
            part = (t - t).sum(dtype=accumulate) if t.dtype == torch.float64 else t.sum(dtype=accumulate)
            parts.append(part if part.device == device else part.to(device))
    if not parts:
        return torch.zeros((), dtype=accumulate, device=device)
    return parts[0] if len(parts) == 1 else torch.stack(parts).sum()


def holds_nonfinite(tensors: list[torch.Tensor]) -> bool:
    """Some tensor holds NaN or Inf (exact, a host sync per tensor: for confirming a witness)."""
    with grad_off():
        return any(not bool(torch.isfinite(t).all()) for t in tensors if t.numel())


def total_norm(norms: torch.Tensor) -> torch.Tensor:
    """The L2 norm of a vector of per-tensor norms, in float64: squares of finite float32 norms
    can overflow float32 themselves, so it is non-finite exactly when some norm is."""
    return torch.linalg.vector_norm(norms, dtype=torch.float64)


def foreach_max_abs(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-tensor max |x| as a float32 (float64 if any tensor is) vector on the first tensor's device, NaN for a tensor
    holding NaN (empty list -> empty vector; an empty tensor -> 0).

    Grouped like `batch_rows`: a fixed handful of kernels per group of equally sized tensors,
    so the kernel count does not grow with the number of tensors. (`_foreach_norm(ord=inf)`
    says the same but takes ~25x as long as max on CPU.)"""
    if not tensors:
        return torch.zeros(0)
    with grad_off():         # under no_grad: no per-tensor detach needed
        return _grouped_rows([t.abs() if t.is_complex() else t for t in tensors], False).reshape(-1)


def zero_counts(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-tensor count of exact zeros (no concatenated copy of the tensors)."""
    if not tensors:
        return torch.zeros(0)
    # The 0-"norm" counts non-zero elements (NaN included, -0.0 not), in one fused call.
    with grad_off():
        nonzero = foreach_norms(tensors, 0.0).to(torch.float32)
    return torch.tensor([float(t.numel()) for t in tensors], device=nonzero.device).sub_(nonzero)


def segment_counts(tensors: list[torch.Tensor], predicate: str) -> torch.Tensor:
    """Per-tensor count of elements that are zero ("zero") or non-finite ("nonfinite"),
    computed over one concatenation so the number of kernels does not grow with the list."""
    if not tensors:
        return torch.zeros(0)
    device = tensors[0].device
    flat = torch.cat([t.detach().reshape(-1).to(device) for t in tensors])
    mask = (flat == 0) if predicate == "zero" else ~torch.isfinite(flat)
    cumulative = torch.cumsum(mask.to(torch.float32 if flat.numel() < 2**24 else torch.float64), 0)
    ends = torch.tensor([t.numel() for t in tensors], device=device).cumsum(0) - 1
    at_end = cumulative[ends]
    before = torch.cat([torch.zeros(1, device=device, dtype=at_end.dtype), at_end[:-1]])
    return (at_end - before).to(torch.float32)


def summarise_values(t: torch.Tensor) -> dict[str, Any]:
    """Domain facts of one tensor for the failing op (replay only: syncs freely)."""
    x = t.detach()
    if x.is_complex():
        x = x.abs()
    info: dict[str, Any] = {"shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", "")}
    if x.numel() == 0:
        return info
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        return info
    xf = x.to(torch.float64)
    finite = xf[torch.isfinite(xf)]
    info.update(
        nan=int(torch.isnan(xf).sum()), inf=int(torch.isinf(xf).sum()),
        zeros=int((xf == 0).sum()), negatives=int((xf < 0).sum()),
    )
    if finite.numel():
        info.update(min=float(finite.min()), max=float(finite.max()), min_abs=float(finite.abs().min()))
    return info


def nonfinite_rows(t: torch.Tensor, limit: int = 64) -> list[int]:
    """Indices along dim 0 (the samples of a batch) of the rows holding NaN/Inf (slow path)."""
    if t.dim() == 0 or t.shape[0] == 0:
        return []
    bad = ~torch.isfinite(t.detach())
    return bad.reshape(t.shape[0], -1).any(dim=1).nonzero().flatten()[:limit].tolist()



def strided_sample(t: torch.Tensor, size: int, odd_stride: bool = False) -> torch.Tensor:
    """An evenly strided view of at most `size` elements of `t` (no copy), or `t` itself when it
    is that small or not contiguous. Sums over the sample times `t.numel() / sample.numel()`
    estimate the tensor's (update ratios, Adam's update RMS: statistics of a whole layer whose
    thresholds are orders of magnitude apart), for the cost of a copy that grows with the number
    of tensors, not their size. `odd_stride`: a stride that shares no factor of 2 with the row
    width (most widths are multiples of a power of 2), so the sample visits every column rather
    than the same few of every row."""
    if t.numel() <= size or not t.is_contiguous():
        return t
    stride = -(-t.numel() // size)
    if odd_stride and stride % 2 == 0:
        stride += 1
    return t.view(-1)[::stride]
