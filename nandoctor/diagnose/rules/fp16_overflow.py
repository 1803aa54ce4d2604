"""Values beyond float16's range."""
from __future__ import annotations

import math

from ...trace.numbers import num
from ...trace import NonfiniteEvent
from ..evidence import at, at_origin
from ..facts import FP16_MAX, SIXTEEN_BIT, module_label, refuted, where
from ..op_semantics import fix_for, max_abs
from ..ownership import fails_only_in_16bit, owned_events, wide_runs, wide_step_finite
from ..finding import Finding, Severity
from .base import Context, Rule


def _peak_activation(run):
    best, module = 0.0, ""
    for layer in run.layers:
        for v in layer.series.get("act_max_abs", []):
            if v is not None and math.isfinite(v) and v > best:
                best, module = v, layer.module
    return best, module


class Fp16Overflow(Rule):
    """What it detects: values beyond float16's range (|x| > 65504) in 16-mixed or 16-true runs
    while float32 and bfloat16 stay finite; and, without a failure, layers whose activations
    come within `thresholds.headroom_warn` of that limit.

    Why it produces NaN or Inf: float16 rounds anything above 65504 to inf; inf - inf in the
    next normalisation or softmax is NaN. bfloat16 has float32's range and does not overflow.

    Evidence used: the replay's first op producing inf in the 16-bit run, per-layer max
    |activation| in every precision, and the failing step re-run in float32 and bfloat16.

    How to fix: train in bf16-mixed where the hardware has it; otherwise keep the overflowing
    module in float32 (`with torch.autocast(device_type, enabled=False): y = block(x.float())`),
    or bring its scale down (normalise its input, scale attention logits by 1/sqrt(d)).

    Example: an MLP block whose pre-activation reaches 9e4 under 16-mixed autocast.

    Thresholds: float16's max 65504 (IEEE) and `thresholds.headroom_warn` (10x) for the warning.
    Confidence 0.8 when a float32 run of the same step stayed finite, 0.6 when only the 16-bit
    precision was scanned (step-fp32 then decides), 0.5 for headroom warnings.
    """

    id = "fp16-overflow"
    title = "float16 overflow"
    experiments = {"step-fp32": "finite", "step-bf16": "finite"}

    def check(self, ctx: Context) -> list[Finding]:
        trace = ctx.trace
        events = owned_events(trace, self.id)
        if events:
            return [self._failure(ctx, events)]
        # No failure: warn about headroom in any run that used float16.
        limit = ctx.thresholds["headroom_warn"]
        # A failed scan has its causes; a run whose activations passed float16's max says nothing
        # about headroom (it is a divergence, not a margin).
        if not any(r.precision in SIXTEEN_BIT for r in trace.runs) or any(r.first_nonfinite for r in trace.runs):
            return []
        for run in trace.runs:
            peak, module = _peak_activation(run)
            if peak and 1 <= FP16_MAX / peak < limit:
                layer = run.layer(module)
                return [Finding(self.id, Severity.WARNING.value, 0.5,
                                f"{module_label(module)} comes within {num(FP16_MAX / peak)}x of float16's max",
                                [f"{run.precision}: max |activation| {num(peak)} in {module_label(module)}; float16 "
                                 f"overflows at {num(FP16_MAX)} (headroom threshold {num(limit)}x)"],
                                f"keep {module_label(module)} in float32 under autocast, normalise its input, or use bf16-mixed",
                                module=module, source=layer.source if layer else None, precisions=[run.precision])]
        return []

    def _failure(self, ctx: Context, events: list[NonfiniteEvent]) -> Finding:
        trace = ctx.trace
        event = events[0]
        loc = where(event)
        only16 = fails_only_in_16bit(trace, event)
        ins = [t for t in event.inputs if t.value is None and t.name != "scalar"]
        evidence = [f"{event.precision}: {event.call or event.op or 'an op'} in {module_label(event.module, event.phase)}{at_origin(event)} produced "
                    f"{'Inf' if event.kind == 'inf' else 'NaN'} at step {event.step} in {event.phase}"]
        if ins:
            evidence.append("its inputs were finite, max |x| " + ", ".join(num(max_abs(t)) for t in ins[:2])
                            + f" (float16 max {num(FP16_MAX)})")
        if event.output is not None and event.output.inf:
            evidence.append(f"{event.output.inf} output elements overflowed to inf")
        wide = wide_runs(trace)
        for run in wide:
            peak, module = _peak_activation(run)
            evidence.append(f"{run.precision}{' (reference run)' if run in trace.reference_runs else ''}: "
                            f"{'clean' if run.first_nonfinite is None else 'failed'}"
                            + (f", largest activation {num(peak)} in {module_label(module)}" if peak else "")
                            + (f" ({num(peak / FP16_MAX)}x the float16 max)" if peak > FP16_MAX else ""))
        rerun = wide_step_finite(trace, event)
        if rerun is not None and not any(r.first_nonfinite is None for r in wide):
            evidence.append(f"the {rerun.label} ({rerun.precision}) stayed finite: the failure is float16's")
        elif only16 is None:
            evidence.append(f"only {event.precision} was scanned: the float32 re-run of step {event.step} tells an "
                            "overflow (finite in float32) from a domain error (still non-finite)")
        module = event.module
        op_fix = fix_for(event, at(loc), loc.code if loc else "")
        no_bf16 = refuted(trace, "step-bf16", [event.precision]) is not None
        no_fp32 = refuted(trace, "step-fp32", [event.precision]) is not None
        if event.precision == "16-true":
            fix = (f"{op_fix}; or train in 16-mixed / bf16-mixed so the op computes in float32 or with float32's range"
                   if op_fix else "train in 16-mixed or bf16-mixed instead of pure float16 weights")
        else:
            fix = ("" if no_bf16 else "train in bf16-mixed, or ") + ("" if no_fp32 else (
                "keep " + module_label(module) + " in float32: "
                "`with torch.autocast(device_type, enabled=False): y = block(x.float())`; or ")) + \
                "reduce its scale (normalise its input" + ("" if "sqrt(" in (loc.code if loc else "") else
                                                          ", scale attention logits by 1/sqrt(d)") + ")"
        clean = ", ".join(r.precision for r in wide if r.first_nonfinite is None)
        return Finding(self.id, Severity.ERROR.value, 0.8 if only16 else 0.6,
                       f"float16 overflow in {module_label(module)}" + (f" (clean in {clean})" if clean else ""),
                       evidence, fix, module=module or None, source=loc, precisions=[e.precision for e in events],
                       explains_origin=True, mechanism="overflow", upstream=bool(only16))

    def plan(self, ctx, finding):  # type: ignore[override]
        # With a clean float32 run the overflow is shown already; without one, step-fp32 decides.
        requests = super().plan(ctx, finding)
        return requests if not wide_runs(ctx.trace) else [r for r in requests if r.id != "step-fp32"]
