"""Values beyond float16's range."""
from __future__ import annotations

import math

from ...trace.numbers import num
from ..facts import FP16_MAX, SIXTEEN_BIT, module_label, op_short, where
from ..finding import Finding, Severity
from .base import Context, Rule


# Ops whose non-finite output is a domain edge (0/0, log 0), not a float16 range overflow.
DOMAIN_OPS = {"div", "true_divide", "reciprocal", "log", "log2", "log10", "log1p", "acos", "asin", "sqrt", "rsqrt"}


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
    """

    id = "fp16-overflow"
    title = "float16 overflow"
    experiments = {"step-fp32": "finite", "step-bf16": "finite"}

    def check(self, ctx: Context) -> list[Finding]:
        trace = ctx.trace
        wide = [r for r in trace.runs if r.precision not in SIXTEEN_BIT and r.status != "unsupported"]
        wide_clean = [r for r in wide if r.first_nonfinite is None and r.error is None]
        # An overflow is an Inf born from finite values (not a 0/0 or a log(0)).
        failing16 = [r for r in trace.runs if r.precision in SIXTEEN_BIT and r.first_nonfinite is not None
                     and r.first_nonfinite.phase in ("forward", "loss", "backward")
                     and r.first_nonfinite.kind == "inf" and not r.first_nonfinite.masked_input
                     and r.first_nonfinite.reproduced is not False
                     and op_short(r.first_nonfinite.op) not in DOMAIN_OPS]
        findings = []
        def same_failure(r) -> bool:
            e, w = failing16[0].first_nonfinite, r.first_nonfinite
            return w is not None and w.step <= e.step and (w.op == e.op or w.step < e.step)
        if failing16 and wide and all(same_failure(r) for r in wide):
            failing16 = []       # float32/bfloat16 fail the same way: not a float16 problem
        if failing16:
            run = failing16[0]
            event = run.first_nonfinite
            assert event is not None
            loc = where(event)
            wide_failing = [r for r in wide if r.first_nonfinite is not None]
            evidence = [f"{run.precision}: {event.op} in {module_label(event.module)}"
                        + (f" at {loc}" if loc else "") + f" produced {'Inf' if event.kind == 'inf' else 'NaN'} at step {event.step}"]

            ins = [t for t in event.inputs if t.name != "scalar"]
            if ins:
                evidence.append("its inputs were finite, max |x| " + ", ".join(
                    num(max(abs(t.min or 0), abs(t.max or 0))) for t in ins[:2]) + f" (float16 max {num(FP16_MAX)})")
            for r in wide:
                peak, module = _peak_activation(r)
                if peak:
                    evidence.append(f"{r.precision}: {'clean' if r in wide_clean else 'failed'}, largest activation "
                                    f"{num(peak)} in {module_label(module)}"
                                    + (f" ({num(peak / FP16_MAX)}x the float16 max)" if peak > FP16_MAX else ""))
            explains = bool(wide_clean) and not wide_failing
            clean_names = ", ".join(r.precision for r in wide_clean)
            module = event.module
            fix = (f"train in bf16-mixed{' (clean here)' if any(r.precision.startswith('bf16') for r in wide_clean) else ''}, "
                   f"or keep {module_label(module)} in float32: "
                   "`with torch.autocast(device_type, enabled=False): y = block(x.float())`; or reduce its scale "
                   "(normalise its input, scale attention logits by 1/sqrt(d))")
            findings.append(Finding(self.id, Severity.ERROR.value if explains else Severity.WARNING.value,
                                    0.8 if explains else 0.3,
                                    f"float16 overflow in {module_label(module)}"
                                    + (f" (clean in {clean_names})" if clean_names else ""),
                                    evidence, fix, module=module, source=loc,
                                    precisions=[r.precision for r in failing16], explains_origin=explains))
            return findings
        # No failure: warn about headroom in any run that used float16.
        limit = ctx.thresholds["headroom_warn"]
        if not any(r.precision in SIXTEEN_BIT for r in trace.runs):
            return []
        for run in trace.runs:
            peak, module = _peak_activation(run)
            if peak and FP16_MAX / peak < limit:
                layer = run.layer(module)
                return [Finding(self.id, Severity.WARNING.value, 0.5,
                                f"{module_label(module)} comes within {num(FP16_MAX / peak)}x of float16's max",
                                [f"{run.precision}: max |activation| {num(peak)} in {module_label(module)}; float16 "
                                 f"overflows at {num(FP16_MAX)} (headroom threshold {num(limit)}x)"],
                                f"keep {module_label(module)} in float32 under autocast, normalise its input, or use bf16-mixed",
                                module=module, source=layer.source if layer else None, precisions=[run.precision])]
        return []
