"""Which cause owns a run's first non-finite event: exactly one, decided in one place.

The origin rules (unstable-op, masked-inf, fp16-overflow, ...) each take the events this
function gives them, so two rules never claim one event and an event no rule claims falls
to `unexplained-nonfinite`. The decision reads typed trace facts only: the phase, the op's
class in the op-semantics table, the recorded input statistics, the precision and what the
other precisions did.
"""
from __future__ import annotations

import math
from typing import Optional

from ..trace import ExperimentResult, NonfiniteEvent, RunTrace, Trace
from ..trace.vocab import DTYPE_SUBNORMAL, DTYPE_TINY, Phase, RunStatus, precision_from_name
from .facts import compile_explains, is_empty_reduction, op_short
from .op_semantics import INDETERMINATE, MASK, OVERFLOW, POLE, classify, generic_arithmetic

SOFTMAX = {"softmax", "log_softmax", "safe_softmax"}
MATMUL = {"addmm", "mm", "bmm", "matmul", "linear", "convolution", "baddbmm", "addbmm", "mkldnn_convolution",
          "convolution_backward", "einsum"}


def is_16bit(precision: str) -> bool:
    found = precision_from_name(precision)
    return bool(found and found.is_16bit)


def compute_dtype(precision: str) -> str:
    found = precision_from_name(precision)
    return found.compute_dtype if found else "float32"


def wide_runs(trace: Trace) -> list[RunTrace]:
    """Runs (requested or added for reference) that compute in float32."""
    return [r for r in list(trace.runs) + list(trace.reference_runs)
            if not is_16bit(r.precision) and r.status != "unsupported"]


# Re-runs of the failing step in a wider dtype: finite there, the failure is the 16-bit precision's.
WIDE_STEP_EXPERIMENTS = ("step-fp32", "step-fp64")


def fails_only_in_16bit(trace: Trace, event: NonfiniteEvent) -> Optional[bool]:
    """True when a float32 run covered the failing step and stayed finite through its whole run,
    or the failing step re-run in float32/float64 stayed finite; False when a float32 run failed
    too (at any step: a divergence that every precision shows is no precision's fault, even
    when the 16-bit run shows it first); None when nothing wider covered the step."""
    covering = []
    for run in wide_runs(trace):
        if run.first_nonfinite is not None or RunStatus(run.status).failed:
            return False
        if run.start_step + run.steps_run - 1 >= event.step:
            covering.append(run)
    if covering or wide_step_finite(trace, event) is not None:
        return True
    return None


def wide_step_finite(trace: Trace, event: NonfiniteEvent) -> Optional[ExperimentResult]:
    """The experiment that re-ran this 16-bit run's failing step in float32 or float64 and
    stayed finite, if one did."""
    if not is_16bit(event.precision):
        return None
    return next((e for e in trace.experiments if e.id in WIDE_STEP_EXPERIMENTS and e.precision == event.precision
                 and e.outcome == "finite"), None)


def precision_cause(event: NonfiniteEvent) -> str:
    """The cause for a failure that only the 16-bit precision has: float16's smallest value (an
    epsilon or a small value that is 0 in float16 in front of a division or a pole), float16's
    range, or bfloat16's mantissa."""
    if compute_dtype(event.precision) == "bfloat16":
        return "bf16-precision"
    return "fp16-underflow" if _fp16_underflow(event, zeros_count=True) else "fp16-overflow"


def _fp16_underflow(event: NonfiniteEvent, zeros_count: bool) -> bool:
    """`log(x + 1e-8)`, `x / (d + 1e-8)`: an epsilon or small value that float16 flushes to 0, in
    front of a division, a reciprocal or a pole (`zeros_count`: an input of exact zeros counts,
    when a wider precision showed the same step finite)."""
    klass = (classify(event) or ("", ""))[0]
    tiny = [t for t in event.inputs if t.value and 0 < abs(t.value) < DTYPE_TINY["float16"]]
    zeros = any(t.zeros for t in event.inputs if t.value is None)
    return (op_short(event.op) in ("div", "add", "reciprocal") or klass == POLE) and bool(tiny or (zeros and zeros_count))


def lr_at(run: Optional[RunTrace], step: int) -> Optional[float]:
    if run is None:
        return None
    record = next((s for s in run.steps if s.step == step), None)
    if record is not None and record.lr is not None:
        return record.lr
    lr = run.optimizer.get("lr")
    return float(lr) if isinstance(lr, (int, float)) else None


def _optimizer_owner(event: NonfiniteEvent, run: Optional[RunTrace]) -> Optional[str]:
    lr = lr_at(run, event.step)
    configured = run.optimizer.get("lr") if run else None
    if isinstance(configured, (int, float)) and not math.isfinite(configured):
        lr = configured
    scalars = [t.value for t in event.inputs if t.value is not None]
    if (lr is not None and (not math.isfinite(lr) or lr < 0)) or any(not math.isfinite(v) for v in scalars):
        return "high-lr"                 # a schedule or a group that hands the optimizer an infinite or negative lr
    if any(t.nan or t.inf for t in event.inputs if t.value is None):
        return "poisoned-optimizer-state"
    eps = run.optimizer.get("eps") if run else None
    dtype = run.param_dtype if run else "float32"
    if isinstance(eps, (int, float)) and (eps == 0 or abs(eps) < DTYPE_SUBNORMAL.get(dtype, 0.0) / 2):
        return "optimizer-eps"
    mechanism = classify(event)
    klass = mechanism[0] if mechanism is not None else None
    divides = klass == INDETERMINATE or op_short(event.op) in ("div", "addcdiv", "reciprocal")
    zeros = any(t.zeros for t in event.inputs if t.value is None) or any(t.value == 0 for t in event.inputs[1:]
                                                                        if t.value is not None and divides)
    if divides and zeros:
        # With an eps that the weights' dtype keeps, `sqrt(v) + eps` is never 0: the 0 the update
        # divides by is another quantity (a bias correction 1 - beta**0 at step 0, a norm of
        # zeros), the op's own edge as in any other phase. Without an eps, the missing eps is the cause.
        return "unstable-op" if isinstance(eps, (int, float)) else "optimizer-eps"
    if event.kind == "inf" and not zeros and scalars:
        return "high-lr"                 # finite inputs, no 0 to divide by: the step size made the update infinite
    if divides and not isinstance(eps, (int, float)):
        return "optimizer-eps"           # an update divided by a norm or moment that was 0, with no eps to stop it
    return "unstable-op" if klass is not None else None


# Ops through which the user's code guards a value by selecting it: torch.where's other branch,
# a masked fill, boolean indexing, a sanitising clamp or nan_to_num. Their backward passes a zero
# gradient to the unselected elements, and the guarded op's derivative there is inf: 0 * inf = NaN.
# A loss that happens to pick other classes (nll_loss, gather) is no guard: the op before it
# (log of a softmax that underflowed) is itself the unstable op.
GUARDS = {"where", "masked_fill", "masked_select", "index", "nan_to_num", "clamp", "clamp_min", "clamp_max", "clip"}


def where_trap(event: NonfiniteEvent, run: Optional[RunTrace]) -> bool:
    """A forward op made inf/NaN that a guard (torch.where, masked_fill, indexing) dropped: the
    forward value never used it, the loss of that step was finite and the failure surfaced in
    the gradients, born in the backward of the guarded op."""
    if event.phase not in (Phase.FORWARD.value, Phase.LOSS.value) or event.surfaced_in not in ("gradients", "parameters"):
        return False
    if event.dropped_by is None or op_short(event.dropped_by.op) not in GUARDS:
        return False
    record = next((s for s in (run.steps if run else []) if s.step == event.step), None)
    return record is not None and record.loss is not None and math.isfinite(record.loss)


def owner(event: NonfiniteEvent, trace: Trace) -> Optional[str]:
    """The cause id that explains this event, or None (the fallback then reports it)."""
    run = trace.run(event.precision)
    phase = event.phase
    if event.reproduced is False:
        return "compile-numerics" if compile_explains(run) else "nonreproducible"
    if phase == Phase.DATA.value:
        return "data-nonfinite"
    if phase == Phase.INIT.value:
        return "bad-init"
    if phase == Phase.OPTIMIZER.value:
        return _optimizer_owner(event, run)
    mechanism = classify(event)
    klass = mechanism[0] if mechanism else None
    name = op_short(event.op)
    only16 = fails_only_in_16bit(trace, event) if is_16bit(event.precision) else False
    if phase == Phase.BACKWARD.value:
        if klass == MASK:
            return "masked-softmax" if name in SOFTMAX or op_short(event.forward_op) in SOFTMAX else "masked-inf"
        if only16:
            return precision_cause(event)        # finite in a wider dtype: whichever op carried it
        if event.kind == "inf" and (name in MATMUL or klass == OVERFLOW):
            return "fp16-overflow" if only16 is None and compute_dtype(event.precision) == "float16" \
                else "exploding-gradients"
        return "grad-singularity"
    if where_trap(event, run):
        return "grad-singularity"
    if klass == MASK:
        return "masked-softmax" if name in SOFTMAX else "masked-inf"
    if is_empty_reduction(event, trace):
        return "empty-reduction"
    if only16:
        # A wider precision ran this step (or the whole run) finite: the 16-bit dtype is the cause,
        # whichever op carried it.
        return precision_cause(event)
    if only16 is None and compute_dtype(event.precision) == "float16":
        # Only float16 was scanned (the float32 re-run has not answered yet): the signs of it.
        if _fp16_underflow(event, zeros_count=False):
            return "fp16-underflow"
        if klass == OVERFLOW or (event.kind == "inf" and klass is None):
            return "fp16-overflow"
    if klass == OVERFLOW and generic_arithmetic(event):
        return "exploding-activations"   # a product or sum past float32's max: the values themselves exploded
    if klass is not None:
        return "unstable-op"
    return None


def owned_events(trace: Trace, cause_id: str) -> list[NonfiniteEvent]:
    """The first non-finite events of the runs that this cause owns."""
    return [r.first_nonfinite for r in trace.runs
            if r.first_nonfinite is not None and owner(r.first_nonfinite, trace) == cause_id]
