"""Data far outside a normalised range."""
from __future__ import annotations

from ...trace import Phase
from ...trace.numbers import num
from ..facts import data_place, finite
from ..finding import Finding, Severity
from .base import Context, Rule


class DataScale(Rule):
    """What it detects: inputs or floating targets far outside a normalised range (|x| in the
    thousands or more), e.g. raw pixel values, unscaled prices, timestamps.

    Why it produces NaN or Inf: the first layer's outputs and the loss scale with the data;
    gradients are then huge, updates overshoot and the run diverges, and in float16 the
    activations overflow 65504 directly.

    Evidence used: max |x| of each batch tensor per step, against `thresholds.data_abs_max`.

    How to fix: normalise in get_batch (`(x - mean) / std` from training statistics; divide
    images by 255; log-transform heavy-tailed targets) or add a normalisation layer first.

    Example: regression targets in the 1e5 range with an MSE loss.

    Thresholds: `thresholds.data_abs_max` (1e4): normalised inputs sit within a few units; 1e4 is
    where float16 activations of a first Linear layer come within 10x of 65504. Confidence 0.8
    once a run fails or diverges, 0.6 as a warning.
    """

    id = "data-scale"
    title = "data far outside a normalised range"
    experiments = {}

    def check(self, ctx: Context) -> list[Finding]:
        limit = ctx.thresholds["data_abs_max"]
        worst: dict[str, float] = {}
        sources: dict[str, object] = {}
        for run in ctx.trace.runs:
            for step in run.steps:
                for b in step.batch:
                    if b.source is not None:
                        sources.setdefault(b.name, b.source)
                    if b.max_abs is not None and b.dtype.startswith(("float", "bfloat")) and b.max_abs > limit:
                        worst[b.name] = max(worst.get(b.name, 0.0), b.max_abs)
        if not worst:
            return []
        # Unnormalised data is an error once it shows downstream: a failure, a diverging loss,
        # or GradScaler skipping step after step.
        streak = int(ctx.thresholds["skip_streak"])
        failing = [r for r in ctx.trace.runs if (r.first_nonfinite is not None and r.first_nonfinite.phase != Phase.DATA.value)
                   or _diverged(r) or _skips(r) >= streak]
        names = ", ".join(f"{name} up to {num(v)}" for name, v in worst.items())
        severity = Severity.ERROR if failing else Severity.WARNING
        evidence = [f"max |x| of {names} (a normalised range stays within ~{num(limit)})"]
        for r in failing:
            if r.first_nonfinite is not None:
                evidence.append(f"{r.precision}: non-finite at step {r.first_nonfinite.step}")
            elif _diverged(r):
                losses = finite(s.loss for s in r.steps)
                evidence.append(f"{r.precision}: loss went from {num(losses[0])} to {num(losses[-1])}")
            else:
                evidence.append(f"{r.precision}: GradScaler skipped {_skips(r)} of {r.steps_run} steps")
        name = max(worst, key=worst.get)
        loc = sources.get(name)
        return [Finding(self.id, severity.value, 0.8 if failing else 0.6, f"{name} reaches {num(worst[name])}: not normalised",
                        evidence, f"normalise {name} {data_place(ctx.trace)}" + (f" (made at {loc})" if loc else "")
                        + ": subtract the training mean and divide by the std (for targets too, and un-normalise "
                        "predictions), or divide images by 255", source=loc,  # type: ignore[arg-type]
                        precisions=[r.precision for r in (failing or ctx.trace.runs)], explains_origin=bool(failing))]


def _diverged(run) -> bool:
    losses = finite(s.loss for s in run.steps)
    return len(losses) >= 2 and losses[0] > 0 and losses[-1] / losses[0] > 1e3


def _skips(run) -> int:
    return sum(1 for s in run.steps if s.skipped)
