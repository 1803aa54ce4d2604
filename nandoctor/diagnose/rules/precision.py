"""Causes that live in 16-bit arithmetic: range, resolution, loss scaling, optimizer eps."""
from __future__ import annotations

import math

from ..facts import FP16_MAX, FP16_TINY, SIXTEEN_BIT, MATMUL_OPS, finite, module_label, num, op_short, where
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
            out = event.output
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


class LossScaleCollapse(Rule):
    """What it detects: GradScaler skipping step after step while its scale keeps falling, so
    the model stops updating (16-mixed). A few skips in the first steps are normal.

    Why it produces NaN or Inf: some gradient overflows float16 at every scale; GradScaler
    halves the scale and skips each step, the scale heads to 0, the weights never change,
    and in the end the tiny scale turns every gradient to 0 or the loss to NaN.

    Evidence used: the loss scale and skipped flag of every step, and which parameters had
    non-finite gradients on the skipped steps.

    How to fix: find the parameter named in the evidence and keep its module in float32, or
    use bf16-mixed; check for a forward value that is inf before scaling (see fp16-overflow).

    Example: an unnormalised final projection whose gradients exceed 65504 on every step.
    """

    id = "loss-scale-collapse"
    title = "GradScaler keeps skipping steps"
    experiments = {"step-bf16": "finite"}

    def check(self, ctx: Context) -> list[Finding]:
        streak_limit = int(ctx.thresholds["skip_streak"])
        for run in ctx.trace.runs:
            if run.precision != "16-mixed" or not run.steps:
                continue
            skipped = [s for s in run.steps if s.skipped]
            if not skipped:
                continue
            trailing = 0
            for s in reversed(run.steps):
                if not s.skipped:
                    break
                trailing += 1
            longest = current = 0
            for s in run.steps:
                current = current + 1 if s.skipped else 0
                longest = max(longest, current)
            if longest < streak_limit:
                continue
            scales = [s.loss_scale for s in run.steps if s.loss_scale is not None]
            culprits: dict[str, int] = {}
            for s in skipped:
                for name in s.nonfinite_grads:
                    culprits[name] = culprits.get(name, 0) + 1
            top = sorted(culprits.items(), key=lambda kv: -kv[1])[:3]
            wide_failed = any(r.first_nonfinite is not None for r in ctx.trace.runs if r.precision not in SIXTEEN_BIT)
            # If float32 fails too, the skips are a symptom of that failure, not the cause.
            severity = Severity.ERROR if trailing >= streak_limit and not wide_failed else Severity.WARNING
            evidence = [f"{len(skipped)} of {run.steps_run} steps skipped (longest streak {longest}); scale "
                        f"{num(scales[0]) if scales else 'n/a'} -> {num(scales[-1]) if scales else 'n/a'}"]
            if top:
                evidence.append("non-finite gradients on skipped steps: " + ", ".join(f"{n} ({c} steps)" for n, c in top))
            module = top[0][0].rpartition(".")[0] if top else None
            param = next((p for p in run.params if top and p.name == top[0][0]), None)
            return [Finding(self.id, severity.value, 0.8, f"GradScaler skipped {len(skipped)} of {run.steps_run} steps",
                            evidence, (f"keep {module_label(module)} in float32 under autocast or train in bf16-mixed; "
                                       "the overflowing gradient belongs to it") if module is not None else
                            "train in bf16-mixed, or find the module whose gradients overflow float16",
                            module=module, source=param.init_source if param else None, precisions=[run.precision],
                            explains_origin=severity == Severity.ERROR)]
        return []


class OptimizerEps(Rule):
    """What it detects: an optimizer eps that rounds to 0 in the parameters' dtype (Adam's
    default 1e-8 is 0 in float16), so `exp_avg / (sqrt(exp_avg_sq) + eps)` divides by zero.

    Why it produces NaN or Inf: any parameter whose gradient is 0 (an unused embedding row, a
    dead ReLU) has exp_avg_sq = 0; with eps = 0 the update is 0/0 = NaN and the weight is NaN.

    Evidence used: the replay's first non-finite value born in the optimizer step, the
    optimizer's eps, and the parameters' dtype; a re-run with eps raised to 1e-4.

    How to fix: use `eps=1e-4` (or larger) for pure float16 weights, or train 16-mixed so the
    optimizer works on float32 master weights.

    Example: `model.half()` with `torch.optim.Adam(model.parameters())`.
    """

    id = "optimizer-eps"
    title = "optimizer eps is zero in the parameters' dtype"
    experiments = {"raise-eps": "finite"}

    def check(self, ctx: Context) -> list[Finding]:
        for run in ctx.trace.runs:
            eps = run.optimizer.get("eps")
            if run.param_dtype != "float16" or not isinstance(eps, (int, float)) or eps >= FP16_TINY:
                continue
            event = run.first_nonfinite
            failed = event is not None and event.phase == "optimizer"
            evidence = [f"{run.optimizer.get('name')} eps={num(eps)} is below float16's smallest value {num(FP16_TINY)}: it is 0 in float16"]
            if failed and event is not None:
                evidence.append(f"step {event.step}: {event.op} made {event.parameter or 'a parameter'}"
                                + (f" ({event.state})" if event.state else "") + f" {'NaN' if event.kind == 'nan' else 'Inf'} in the optimizer step")
            loc = ctx.trace.functions.get("build_optimizer")
            return [Finding(self.id, (Severity.ERROR if failed else Severity.WARNING).value, 0.9 if failed else 0.6,
                            f"{run.optimizer.get('name')} eps {num(eps)} is 0 in float16", evidence,
                            f"pass `eps=1e-4` to the optimizer{' at ' + str(loc) if loc else ' (config optimizer.eps)'}, "
                            "or train 16-mixed so the optimizer keeps float32 master weights",
                            module=event.module if failed and event else None, source=loc, precisions=[run.precision],
                            explains_origin=failed)]
        return []
