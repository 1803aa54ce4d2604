"""Gradients or constants flushing to zero in float16."""
from __future__ import annotations

import math

from ...trace.numbers import num
from ..evidence import at, at_origin
from ..facts import FP16_TINY, SIXTEEN_BIT, op_short, where
from ..ownership import fails_only_in_16bit, owned_events, wide_step_finite
from ..finding import Finding, Severity
from .base import Context, Rule


class Fp16Underflow(Rule):
    """What it detects: gradients or small constants that flush to zero in float16: a larger
    share of exactly-zero gradient elements in 16-bit runs than in float32 (no or too small
    loss scale), or an epsilon below float16's smallest value (6e-8) that becomes 0 and leaves
    a division by zero.

    Why it produces NaN or Inf: gradients below 6e-8 become 0 and those weights stop
    learning; an `eps=1e-8` added in float16 is 0, so `x / (norm + eps)` divides by zero.

    Evidence used: per-parameter share of zero gradient elements per precision, the loss-scale
    setting, and for failures the op and its inputs in the 16-bit replay vs a clean float32 run.

    How to fix: keep dynamic loss scaling on for 16-mixed (`loss_scale: dynamic`); use eps of at
    least 1e-4 in code that runs in float16 (or `torch.finfo(x.dtype).eps`); or use bf16.

    Example: `x / (x.norm(dim=-1, keepdim=True) + 1e-8)` in a 16-true run with a zero row.

    Thresholds: float16's smallest normal 6.1e-5 (IEEE) and `thresholds.underflow_zero_share` (5
    percentage points more exact-zero gradient elements than float32 at the same steps).
    Confidence 0.75 for a failure, 0.7 for the warning.
    """

    id = "fp16-underflow"
    title = "float16 underflow"
    experiments = {"step-fp32": "finite"}

    def check(self, ctx: Context) -> list[Finding]:
        trace = ctx.trace
        fp32 = trace.run("32-true") or next((r for r in trace.reference_runs if r.precision == "32-true"), None)
        findings = []
        for event in owned_events(trace, self.id):
            loc = where(event)
            tiny = [t for t in event.inputs if t.value and 0 < abs(t.value) < FP16_TINY]
            clean = f"; {fp32.precision} ran all {fp32.steps_run} steps clean" if fp32 is not None and fp32.status == "ok" else ""
            rerun = wide_step_finite(trace, event)
            if not clean and rerun is not None:
                clean = f"; the {rerun.label} stayed finite"
            evidence = [f"{event.precision}: {event.call or event.op or 'an op'}{at_origin(event)} produced {'NaN' if event.kind == 'nan' else 'Inf'} "
                        f"at step {event.step}{clean}"]
            if tiny:
                evidence.append(f"the constant {num(tiny[0].value)} is below float16's smallest normal value "
                                f"{num(FP16_TINY)} and rounds to 0 or loses its digits")
            zero_inputs = [t for t in event.inputs if t.value is None and t.zeros]
            if zero_inputs:
                evidence.append(f"{zero_inputs[-1].name} had {zero_inputs[-1].zeros} exact zeros in {zero_inputs[-1].dtype}")
            if tiny or event.call:      # a constant in the code, or a call's own eps argument
                fix = (f"use an epsilon float16 can hold{at(loc)}: 1e-4 or `torch.finfo(x.dtype).eps` instead of "
                       f"{num(tiny[0].value) if tiny else '1e-8'}" + (f" (when it is an argument of `{event.call}`, pass a larger one, e.g. "
                                                  "`eps=1e-4`), or compute this op in float32" if event.call else ""))
            else:
                # No constant to enlarge: a value (a temperature, a norm, a count) that is small but
                # not 0 in float32 rounds to 0 in float16 in front of the op.
                fix = (f"the {op_short(event.call or event.op)}{at(loc)} receives a value that float16 rounds to 0: "
                       "floor it at a value float16 holds (`d.clamp_min(1e-4)`, e.g. a temperature annealed towards "
                       "0), or compute this op in float32 (`x.float()` before it, or "
                       "`torch.autocast(device_type, enabled=False)`)")
            findings.append(Finding(self.id, Severity.ERROR.value, 0.75,
                                    f"a small constant or value flushes to zero in float16{at(loc)}",
                                    evidence, fix,
                                    module=event.module or None, source=loc,
                                    precisions=[event.precision], explains_origin=True, mechanism="pole",
                                    upstream=bool(fails_only_in_16bit(trace, event))))
        if findings or fp32 is None:
            return findings
        limit = ctx.thresholds["underflow_zero_share"]
        negligible = _negligible_in_float32(fp32)
        for run in trace.runs:
            if run.precision not in SIXTEEN_BIT or not run.params:
                continue
            shares = []
            for p16 in run.params:
                p32 = next((p for p in fp32.params if p.name == p16.name), None)
                if p32 is None or p32.name in negligible:
                    continue
                # The same recorded steps in both runs: the same batches, so the same true zeros.
                pairs = [(a, b) for a, b in zip(p16.series.get("grad_zero_frac", []), p32.series.get("grad_zero_frac", []))
                         if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
                if not pairs:
                    continue
                z16 = sum(a for a, _ in pairs) / len(pairs)
                z32 = sum(b for _, b in pairs) / len(pairs)
                if z16 - z32 > limit:
                    shares.append((z16 - z32, p16, z16, z32))
            if not shares:
                continue
            shares.sort(key=lambda s: -s[0])
            extra, param, z16, z32 = shares[0]
            scale = trace.config.get("loss_scale")
            fix = ("turn dynamic loss scaling on (`loss_scale: dynamic`)" if scale == "none" and run.precision == "16-mixed"
                   else "use bf16-mixed, or 16-mixed with dynamic loss scaling instead of pure float16 weights"
                   if run.precision == "16-true" else f"raise the loss scale (now {scale}); use `loss_scale: dynamic`")
            reference = "32-true" + (" (a reference run nandoctor added)" if fp32 in trace.reference_runs else "")
            evidence = [f"{p.name}: {num(100 * a)}% zero gradient elements in {run.precision} vs {num(100 * b)}% in "
                        f"{reference} at the same steps" for _, p, a, b in shares[:4]]
            evidence.append(f"threshold: {num(100 * limit)} percentage points more zeros than float32 "
                            f"(loss_scale: {scale})")
            findings.append(Finding(self.id, Severity.WARNING.value, 0.7,
                                    f"{num(100 * extra)}% more of {param.name}'s gradient is exactly zero in "
                                    f"{run.precision} than in float32", evidence,
                                    fix, module=param.module or None, source=param.init_source, precisions=[run.precision],
                                    mechanism="underflow"))
        return findings


# A parameter whose float32 gradient is this small next to the model's largest is round-off
# around a true zero (e.g. a bias that a shift-invariant loss cannot see): float16 flushing it
# to exactly zero loses nothing.
NEGLIGIBLE_GRAD = 1e-6


def _negligible_in_float32(fp32) -> set[str]:
    norms = {p.name: [v for v in p.series.get("grad_norm", []) if v is not None and math.isfinite(v)] for p in fp32.params}
    largest = max((max(v) for v in norms.values() if v), default=0.0)
    if largest <= 0:
        return set()
    return {name for name, v in norms.items() if v and max(v) <= NEGLIGIBLE_GRAD * largest}
