"""GradScaler skipping step after step."""
from __future__ import annotations

import math

from ...trace import PostmortemTrace
from ...trace.numbers import num
from ..facts import SIXTEEN_BIT, module_label
from ..finding import Finding, Severity
from .base import Context, Rule


COLLAPSED_SCALE = 1.0  # GradScaler starts at 65536; below 1 it has halved 16+ times: steps were being skipped


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

    Thresholds: `thresholds.skip_streak` (5 skips in a row after the scaler's first update;
    before it, GradScaler is calibrating from 65536 by design) and `thresholds.scale_floor`
    (a scale below 1, saved or before any update: it halves per skip, so 16+ skips).
    Confidence 0.8 (scan), 0.85 (checkpoint).
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
            counted = _collapse_candidates(run.steps, ctx.thresholds.get("scale_floor", COLLAPSED_SCALE))
            trailing = 0
            for s, counts in zip(reversed(run.steps), reversed(counted)):
                if not s.skipped or not counts:
                    break
                trailing += 1
            longest = current = 0
            for s, counts in zip(run.steps, counted):
                current = current + 1 if s.skipped and counts else 0
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

    def check_checkpoint(self, trace: PostmortemTrace) -> list[Finding]:
        return _checkpoint_findings(trace)


def _collapse_candidates(steps: list, floor: float) -> list[bool]:
    """Per step: may its skip count toward a collapse? Skips before the scaler's first update are
    its calibration from init_scale (65536 halving to what the model needs, 8 skips for 256),
    unless the scale went below `floor`; every skip after the first update counts."""
    first_update = next((i for i, s in enumerate(steps) if not s.skipped), len(steps))
    leading = steps[:first_update]
    scales = [s.loss_scale for s in leading if s.loss_scale is not None]
    collapsed = bool(scales) and min(scales) < floor
    return [collapsed] * first_update + [True] * (len(steps) - first_update)


def _checkpoint_findings(trace: PostmortemTrace) -> list[Finding]:
    """loss-scale-collapse (documented with the scan rule): a saved GradScaler scale far below its start."""
    scaler = trace.scaler
    if not scaler or not isinstance(scaler.get("scale"), (int, float)):
        return []
    scale = float(scaler["scale"])
    if scale >= COLLAPSED_SCALE and math.isfinite(scale):
        return []
    return [Finding("loss-scale-collapse", Severity.ERROR.value, 0.85, f"GradScaler scale collapsed to {num(scale)}",
                    [f"saved scale {num(scale)} (it starts at 65536; each skipped step halves it), growth tracker "
                     f"{scaler.get('_growth_tracker')}"],
                    "steps were being skipped: find the overflowing layer with `nandoctor scan model.py --checkpoint "
                    f"{trace.path} --precision 16-mixed`, or train in bf16-mixed")]
