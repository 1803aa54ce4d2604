"""Gradients or constants flushing to zero in float16."""
from __future__ import annotations

from ...trace.numbers import num
from ..facts import FP16_TINY, SIXTEEN_BIT, finite, op_short, where
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
    """

    id = "fp16-underflow"
    title = "float16 underflow"
    experiments = {"step-fp32": "finite"}

    def check(self, ctx: Context) -> list[Finding]:
        trace = ctx.trace
        fp32 = trace.run("32-true")
        findings = []
        fp32_clean = fp32 is not None and fp32.status == "ok"
        for run in trace.runs:
            event = run.first_nonfinite
            if run.precision not in SIXTEEN_BIT or event is None or not fp32_clean:
                continue
            tiny = [t for t in event.inputs if t.name == "scalar" and t.value and 0 < abs(t.value) < FP16_TINY]
            if op_short(event.op) in ("div", "reciprocal", "add") and (tiny or any(t.zeros for t in event.inputs)) \
                    and event.phase in ("forward", "loss"):
                loc = where(event)
                evidence = [f"{run.precision}: {event.op} at {loc} produced {'NaN' if event.kind == 'nan' else 'Inf'} "
                            f"at step {event.step}; 32-true ran all {fp32.steps_run} steps clean"]
                if tiny:
                    evidence.append(f"the constant {num(tiny[0].value)} is below float16's smallest value "
                                    f"{num(FP16_TINY)} and rounds to 0")
                zero_inputs = [t for t in event.inputs if t.name != "scalar" and t.zeros]
                if zero_inputs:
                    evidence.append(f"{zero_inputs[-1].name} had {zero_inputs[-1].zeros} exact zeros in {zero_inputs[-1].dtype}")
                findings.append(Finding(self.id, Severity.ERROR.value, 0.75,
                                        f"a small constant or value flushes to zero in float16{' at ' + str(loc) if loc else ''}",
                                        evidence, f"use an epsilon float16 can hold at {loc}: 1e-4 or "
                                        "`torch.finfo(x.dtype).eps` instead of 1e-8", module=event.module, source=loc,
                                        precisions=[run.precision], explains_origin=True))
        if findings or fp32 is None:
            return findings
        limit = ctx.thresholds["underflow_zero_share"]
        for run in trace.runs:
            if run.precision not in SIXTEEN_BIT or not run.params:
                continue
            worst = None
            for p16 in run.params:
                p32 = next((p for p in fp32.params if p.name == p16.name), None)
                if p32 is None:
                    continue
                z16 = finite(p16.series.get("grad_zero_frac", []))
                z32 = finite(p32.series.get("grad_zero_frac", []))
                if not z16 or not z32:
                    continue
                extra = sum(z16) / len(z16) - sum(z32) / len(z32)
                if extra > limit and (worst is None or extra > worst[0]):
                    worst = (extra, p16, sum(z16) / len(z16), sum(z32) / len(z32))
            if worst is None:
                continue
            extra, param, z16, z32 = worst
            scale = trace.config.get("loss_scale")
            fix = ("turn dynamic loss scaling on (`loss_scale: dynamic`)" if scale == "none" and run.precision == "16-mixed"
                   else "use bf16-mixed, or 16-mixed with dynamic loss scaling instead of pure float16 weights"
                   if run.precision == "16-true" else f"raise the loss scale (now {scale}); use `loss_scale: dynamic`")
            findings.append(Finding(self.id, Severity.WARNING.value, 0.7,
                                    f"{num(100 * z16)}% of {param.name}'s gradient is exactly zero in {run.precision}",
                                    [f"{param.name}: {num(100 * z16)}% zero gradient elements in {run.precision} vs "
                                     f"{num(100 * z32)}% in 32-true (loss_scale: {scale})"],
                                    fix, module=param.module, source=param.init_source, precisions=[run.precision]))
        return findings
