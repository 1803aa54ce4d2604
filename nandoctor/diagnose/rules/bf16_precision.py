"""bfloat16's 8-bit mantissa losing the digits a computation needs."""
from __future__ import annotations

from ...trace import NonfiniteEvent
from ..evidence import at, at_origin, input_facts, precisions_of
from ..facts import module_label, op_short, where
from ..finding import Finding, Severity
from ..op_semantics import POLE, classify
from ..ownership import fails_only_in_16bit, wide_runs, wide_step_finite
from .base import Context, OriginRule


class Bf16Precision(OriginRule):
    """What it detects: a NaN or Inf born only in a bfloat16 precision (bf16-mixed, bf16-true)
    from a domain or pole op whose input went out of its domain through rounding, while the
    same step in float32 stays finite. The classic case: a one-pass variance E[x²] - E[x]²
    that cancels to a negative number in bfloat16, then `sqrt` of it is NaN.

    Why it produces NaN or Inf: bfloat16 keeps float32's range but only 8 bits of mantissa
    (about 2-3 decimal digits, eps 7.8e-3). A difference of two nearly equal numbers loses
    all its digits and can come out negative or zero; sqrt, log or a division then fail at a
    value that is exactly 0 or positive in float32.

    Evidence used: the bf16 run's origin op and its inputs (negatives, zeros), a float32 run
    (requested or added for reference) that ran the same step finite, and the step re-run
    in float32.

    How to fix: compute the sensitive statistic in float32 (`x.float().var(-1)` or
    `torch.autocast(device_type, enabled=False)` around it), use the two-pass / Welford form
    (`torch.var`) instead of E[x²] - E[x]², and clamp before sqrt/log (`.clamp_min(0)`). When
    the input landed exactly on the op's pole (a probability rounded to 1.0 before `log1p(-p)`),
    the fix says so: bfloat16's spacing below 1 is 2**-8, so a guard such as
    `clamp(max=1 - 1e-6)` rounds to 1.0 and guards nothing.

    Example: `var = (x * x).mean(-1) - x.mean(-1) ** 2; x / torch.sqrt(var + 1e-5)` under bf16-true.

    Thresholds: none; the float32 run of the same step is the reference. Confidence 0.8, 0.99
    when the step-fp32 experiment confirms.
    """

    id = "bf16-precision"
    title = "bfloat16 rounding pushed an op out of its domain"
    experiments = {"step-fp32": "finite"}

    def explain_event(self, ctx: Context, event: NonfiniteEvent, group: list[NonfiniteEvent]) -> Finding:
        module = event.module
        reference = ", ".join(sorted({r.precision for r in wide_runs(ctx.trace)}))
        rerun = wide_step_finite(ctx.trace, event)
        if not reference and rerun is not None:
            reference = f"the {rerun.label} ({rerun.id})"
        loc = where(event)
        mechanism = classify(event)
        evidence = [f"{precisions_of(group)}: {event.call or event.op or 'an op'} in {module_label(module, event.phase)}{at_origin(event)} "
                    f"produced {'NaN' if event.kind == 'nan' else 'Inf'} at step {event.step}"
                    + (f": {mechanism[1]}" if mechanism else ""),
                    f"{reference or 'float32'} ran step {event.step} finite: the value is in the op's domain "
                    "before bfloat16 rounding (8-bit mantissa, eps 7.8e-3)"]
        facts = input_facts(event)
        if facts:
            evidence.append(facts)
        if event.producer is not None:
            evidence.append(f"its input came from {event.producer.op}{at(event.producer.source)}")
        name = op_short(event.op)
        producer = op_short(event.producer.op) if event.producer is not None else ""
        title = f"bfloat16 rounding made {name}'s input leave its domain{at(loc)}"
        if mechanism and mechanism[0] == POLE and producer not in ("sub", "rsub", "add"):
            title = f"bfloat16 rounding put {name}'s input on its pole{at(loc)}"
            # no cancellation made the value: rounding put it exactly on the pole, where a guard constant near
            # the pole (1 - 1e-6) is itself rounded onto it
            fix = (f"compute it in float32{at(loc)}: `x = x.float()` before it (or "
                   "`torch.autocast(device_type, enabled=False)`); a clamp bound near the pole must be "
                   "representable in bfloat16 (its spacing below 1 is 2**-8: `1 - 1e-6` rounds to 1.0), or use the "
                   "fused stable form from logits (`F.logsigmoid`, `torch.log_softmax`)")
        else:
            fix = (f"compute this statistic in float32{at(loc)}: `x = x.float()` before it (or "
                   "`torch.autocast(device_type, enabled=False)`), use `torch.var(x, -1, unbiased=False)` instead "
                   f"of E[x²] - E[x]², and clamp the argument of {name} (`.clamp_min(0)`)")
        return Finding(self.id, Severity.ERROR.value, 0.8,
                                title, evidence, fix,
                                module=module or None, source=loc, precisions=[e.precision for e in group],
                                explains_origin=True, mechanism=mechanism[0] if mechanism else "",
                                upstream=bool(fails_only_in_16bit(ctx.trace, event)))
