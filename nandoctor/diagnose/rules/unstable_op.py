"""A numerically unsafe op at the edge of its inputs: a pole, a domain edge, an overflow, an
indeterminate form, or a composite op that hits one of them inside."""
from __future__ import annotations

from typing import Optional

from ...trace import NonfiniteEvent, SourceLocation
from ..evidence import at, at_origin, input_facts, library_note, precisions_of
from ..facts import SOFTMAX_OPS, library_frame, module_label, op_short, user_call_site, user_line, where
from ..finding import Finding, Severity
from ..op_semantics import arrived_as_number, classify, fix_for
from ..ownership import is_16bit, wide_runs
from .base import Context, OriginRule


def unstable_fix(event: NonfiniteEvent, call: Optional[SourceLocation] = None) -> str:
    """The fix for this op, written for the user's line; the fused stable form when one exists."""
    name = op_short(event.op)
    loc = where(event)
    here = at(loc)
    producer = op_short(event.producer.op) if event.producer else ""
    line = loc.code if loc else ""
    if name in ("log", "log2", "log10") and (producer in SOFTMAX_OPS or "softmax" in line):
        return f"replace `torch.log(torch.softmax(x, dim))`{here} with `torch.log_softmax(x, dim)` (or pass logits to `F.cross_entropy`)"
    if name in ("log", "log2", "log10") and (producer == "sigmoid" or "sigmoid" in line):
        return f"replace `torch.log(torch.sigmoid(x))`{here} with `F.logsigmoid(x)`, or use `nn.BCEWithLogitsLoss` on the logits"
    if event.phase == "optimizer" and name in ("div", "true_divide", "reciprocal") and _scalar_zero_divisor(event):
        return (f"the update{here} divides by a scalar that is 0 at step {event.step}: a bias correction "
                "`1 - beta ** step` is 0 while the step count is 0, so count steps from 1 (increment the step "
                "before computing `1 - beta ** step`), or guard the division (`x / max(d, 1e-12)`)")
    if event.scalar_source is not None and arrived_as_number(event):
        return (f"the NaN reached{here} as a Python number made by {event.scalar_source.op}"
                f"{at(user_line(event.scalar_source.source))}: guard that computation (e.g. `a / b.clamp_min(1e-6)`) before "
                "calling `.item()` / `float()` on it")
    fix = fix_for(event, here, line) or f"guard the op{here} against its domain edge (clamp the input, add an epsilon)"
    return fix + library_note(event, call)


def _scalar_zero_divisor(event: NonfiniteEvent) -> bool:
    """The divisor is one number (a 0-dim tensor or a Python scalar) equal to 0."""
    divisor = event.inputs[-1] if event.inputs else None
    if divisor is None:
        return False
    if divisor.value is not None:
        return divisor.value == 0
    return divisor.shape == [] and divisor.zeros == 1


class UnstableOp(OriginRule):
    """What it detects: an op that made NaN or Inf from finite inputs in any phase (the forward
    pass, the loss, the optimizer's own update), classified by the op-semantics table: a pole (log/log2 of 0, 1/0, 0 ** -0.5,
    rsqrt(0), atanh(±1), lgamma at 0), a domain edge (sqrt/log of a negative, a fractional
    power of a negative, acos outside [-1, 1], logdet/cholesky of a matrix that is not positive
    definite), an overflow (exp above ~88.7 in float32, cosh, a product beyond the dtype's max),
    an indeterminate form (0/0, inf - inf), or a composite op (ctc_loss without an alignment,
    weight_norm of a zero weight, a norm layer over zero variance) that hits one inside. In the
    optimizer step: a division by a quantity that is 0 although the optimizer's eps is set (a
    bias correction `1 - beta ** step` at step 0, a norm of zeros).

    Why it produces NaN or Inf: these ops return -inf, inf or NaN for finite inputs at their
    edge; the value then flows into the loss and every gradient.

    Evidence used: the replay's first op whose output was non-finite, the public torch call
    the user's line made (`torch.logdet`, with the aten op as detail), its input statistics
    (min, max, zeros, negatives, Python scalar arguments), the op that produced its input or
    the 0-dim op that made a NaN passed as a Python number, and whether the step still fails
    in float64 (a true singularity, not a rounding effect).

    How to fix: the fix written for that op in the table: the fused stable form
    (`log_softmax`, `logsigmoid`, `logsumexp`, `BCEWithLogitsLoss`), a clamp or an epsilon at
    the reported line, `zero_infinity=True` for CTC, a ridge for a matrix; in an optimizer,
    count steps from 1 so that a bias correction is never 0.

    Example: `torch.log(torch.softmax(logits, -1))` underflows to log(0) = -inf once a class
    probability rounds to 0; `torch.log_softmax(logits, -1)` never does.

    Thresholds: none; the class comes from the op and the recorded input statistics.
    Confidence 0.8 (0.6 when only a 16-bit run was scanned and the float32 re-run of the step
    has not yet told overflow from a domain error).
    """

    id = "unstable-op"
    title = "numerically unstable op"
    experiments = {"step-fp64": "nonfinite", "step-fp32": "nonfinite"}
    confirm_only = frozenset({"step-fp64", "step-fp32"})

    def explain_event(self, ctx: Context, event: NonfiniteEvent, group: list[NonfiniteEvent]) -> Finding:
        module, phase = event.module, event.phase
        loc = where(event)
        mechanism = classify(event)
        klass, how = mechanism if mechanism else ("", "")
        kind = "NaN" if event.kind == "nan" else "Inf"
        shown = event.call or event.op
        evidence = [f"{shown} in {module_label(module, event.phase)}{at_origin(event)} produced {kind} at step "
                    f"{event.step} ({precisions_of(group)})" + (f" [aten op {event.op}]" if event.call else "")]
        if how:
            evidence.append(f"{klass}: {how}")
        facts = input_facts(event)
        if facts:
            evidence.append(facts)
        scalars = [t for t in event.inputs if t.value is not None]
        if scalars:
            evidence.append("scalar arguments: " + ", ".join(f"{t.name} = {t.value}" for t in scalars[:3]))
        if event.scalar_source is not None and arrived_as_number(event):
            evidence.append(f"a NaN passed as a Python number was made by {event.scalar_source.op}"
                            f"{at(event.scalar_source.source)}")
        elif event.scalar_source is not None:
            made = ("" if event.scalar_source.op == event.op else
                    f", made by {event.scalar_source.op}{at(event.scalar_source.source)},")
            evidence.append(f"its result left autograd as a Python number (`.item()` / `float()`){made} and "
                            "carried the NaN into the loss from there")
        elif event.producer:
            evidence.append(f"its input came from {event.producer.op}{at(event.producer.source)}")
        untested16 = is_16bit(event.precision) and not wide_runs(ctx.trace)
        title = f"{op_short(event.call or event.op)} produced {kind} in {phase}{at(loc)}" + (f" ({klass})" if klass else "")
        return Finding(self.id, Severity.ERROR.value, 0.6 if untested16 else 0.8, title, evidence,
                                unstable_fix(event, user_call_site(ctx.trace)), module=module or None,
                                source=loc or (user_call_site(ctx.trace) if library_frame(event) else None),
                                precisions=[e.precision for e in group], explains_origin=True, mechanism=klass)

    def plan(self, ctx, finding):  # type: ignore[override]
        # step-fp32 only tells something when no float32 run was scanned (overflow vs domain).
        requests = super().plan(ctx, finding)
        if wide_runs(ctx.trace):
            requests = [r for r in requests if r.id != "step-fp32"]
        return [r for r in requests if r.id != "step-fp32" or is_16bit(r.precision)]
