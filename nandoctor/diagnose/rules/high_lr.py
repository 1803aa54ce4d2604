"""A learning rate too high for the loss surface."""
from __future__ import annotations

import math
from typing import Optional

from ...trace import NonfiniteEvent, PostmortemTrace, RunTrace, SourceLocation
from ...trace.numbers import num
from ..facts import finite, module_label
from ..finding import Finding, Severity
from ..ownership import lr_at, owned_events
from .base import Context, Rule


def _max_update(run: RunTrace, until: Optional[int] = None) -> tuple[float, str, int]:
    """Largest per-layer update ratio ||dw||/||w|| (finite) before step index `until`."""
    best, where, at = 0.0, "", -1
    for layer in run.layers:
        values = layer.series.get("update_ratio", [])[:until]
        for i, v in enumerate(values):
            if v is not None and math.isfinite(v) and v > best:
                best, where, at = v, layer.module, run.start_step + i
    return best, where, at


def _loss_growth(run: RunTrace) -> tuple[float, Optional[float], Optional[float]]:
    losses = finite(s.loss for s in run.steps)
    if len(losses) < 2:
        return 1.0, None, None
    # The largest rise over the lowest loss seen before it: a spike counts even when the run
    # settles afterwards (a too-high peak lr that killed every ReLU ends on a flat plateau).
    low, best = losses[0], (1.0, losses[0], losses[-1])
    for loss in losses[1:]:
        rise = (math.inf if loss > 0 else 1.0) if low <= 0 else loss / low
        if rise > best[0]:
            best = (rise, low, loss)
        low = min(low, loss)
    return best


def _infinite_lr(ctx: Context, event: NonfiniteEvent) -> Finding:
    """The optimizer was handed a non-finite learning rate (a schedule dividing by 0 at step 0)."""
    run = ctx.trace.run(event.precision)
    lr = lr_at(run, event.step)
    configured = run.optimizer.get("lr") if run else None
    shown = configured if isinstance(configured, (int, float)) and not math.isfinite(configured) else lr
    # The replay names the user's line that made the non-finite value (the schedule's division),
    # else the line that built the scheduler or the optimizer.
    loc = event.user_source or ctx.trace.functions.get("build_scheduler") or _optimizer_location(ctx)
    evidence = [f"step {event.step}: the optimizer step ran with learning rate {num(shown)}"
                + (f" and made {event.parameter} non-finite" if event.parameter else " and made the parameters non-finite"),
                "the gradients of this step were finite: the update itself is infinite"]
    fix = (f"the learning-rate schedule{' at ' + str(loc) if loc else ''} returns a non-finite factor at step "
           f"{event.step}: guard its division (e.g. `1 / math.sqrt(max(step, 1))`, warm-up from step 1)")
    return Finding("high-lr", Severity.ERROR.value, 0.9, f"the learning rate is {num(shown)} at step {event.step}",
                   evidence, fix, source=loc, precisions=[event.precision], explains_origin=True, mechanism="overflow")


def _optimizer_location(ctx: Context) -> Optional[SourceLocation]:
    fn = ctx.trace.functions.get("build_optimizer")
    return fn


class HighLearningRate(Rule):
    """What it detects: a learning rate too high for the loss surface: parameter updates that
    are a large fraction of the weights (update ratio ||dw||/||w|| far above ~1e-3), a loss that
    grows step after step, and a run that ends non-finite after a few healthy steps.

    Why it produces NaN or Inf: each overshooting step grows the weights; activations and
    gradients grow with them until a matmul, an exp or a softmax overflows.

    Evidence used: per-layer update ratios before the failing step, the loss trend, the step
    at which the run failed, and re-runs with the learning rate divided by 10 and 100.

    How to fix: divide the learning rate by the factor the experiment confirmed; add warmup
    and gradient clipping for long runs.

    Example: SGD with lr=5 on a small MLP: update ratio 0.9 at step 2, loss 1e3 at step 4, NaN at 6.

    Thresholds: `thresholds.update_ratio_high` (0.1): healthy training moves weights by ~1e-3 of
    their norm per step (Karpathy's rule of thumb); 100x that overshoots. A loss growth of 10x
    counts as divergence. Confidence 0.5 + 0.15 (ratio 10x over the threshold) + 0.1 (diverging
    loss), capped at 0.85; 0.9 for an infinite lr; +0.2 when lr/10 confirms.
    """

    id = "high-lr"
    title = "learning rate too high"
    experiments = {"lower-lr": "finite"}

    def check(self, ctx: Context) -> list[Finding]:
        owned = owned_events(ctx.trace, self.id)
        if owned:
            return [_infinite_lr(ctx, owned[0])]
        limit = ctx.thresholds["update_ratio_high"]
        failing, warned = [], []
        for run in ctx.trace.runs:
            if run.first_nonfinite is not None and run.first_nonfinite.phase in ("data", "init"):
                continue
            ratio, where, at = _max_update(run)
            growth, low, last = _loss_growth(run)
            failed = run.first_nonfinite is not None and run.first_nonfinite.step > run.start_step
            big_updates = ratio > limit
            diverging = growth > 10
            if failed and big_updates:
                failing.append((run, ratio, where, at, growth, low, last))
            elif run.status == "ok" and big_updates and diverging:
                warned.append((run, ratio, where, at, growth, low, last))
        chosen = failing or warned
        if not chosen:
            return []
        run, ratio, where, at, growth, low, last = max(chosen, key=lambda c: c[1])
        # The lr in force when the run diverged (a warm-up or schedule changes it step by step).
        # A run that stayed finite diverged somewhere in its schedule: its peak lr is the suspect.
        recorded = [s.lr for s in run.steps if s.lr is not None and math.isfinite(s.lr)]
        lr = (lr_at(run, run.first_nonfinite.step - 1) if run.first_nonfinite
              else max(recorded) if recorded else lr_at(run, run.start_step + run.steps_run - 1))
        first_lr = lr_at(run, run.start_step)
        evidence = []
        if lr is not None and first_lr is not None and lr != first_lr:
            evidence.append(f"the schedule raised the learning rate from {num(first_lr)} at step {run.start_step} to "
                            f"{num(lr)} before the divergence")
        if ratio > limit:
            evidence.append(f"update ratio {num(ratio)} at step {at} in {module_label(where)} "
                            f"(healthy runs stay near 1e-3; threshold {num(limit)})")
        if low is not None and growth > 1:
            evidence.append(f"loss rose from a minimum of {num(low)} to {num(last)} ({num(growth)}x) before "
                            + (f"turning non-finite at step {run.first_nonfinite.step}" if run.first_nonfinite else "the end"))
        others = [f"{r.precision} at step {r.first_nonfinite.step}" for r, *_ in failing if r is not run and r.first_nonfinite]
        if others:
            evidence.append("also failing: " + ", ".join(others))
        new_lr = f"{lr / 10:.0e}" if isinstance(lr, (int, float)) else "a tenth"
        loc = _optimizer_location(ctx)
        where_lr = f"in build_optimizer ({loc})" if loc else "(config `optimizer.lr` or `--lr`)"
        fix = f"lower the learning rate from {num(lr) if isinstance(lr, (int, float)) else lr} to {new_lr} {where_lr}; add warmup and `grad_clip` for long runs"
        severity = Severity.ERROR if failing else Severity.WARNING
        confidence = 0.5 + (0.15 if ratio > 10 * limit else 0) + (0.1 if growth > 10 else 0)
        return [Finding(self.id, severity.value, min(confidence, 0.85),
                        f"learning rate {num(lr) if isinstance(lr, (int, float)) else lr} is too high: the run diverges",
                        evidence, fix, module=where or None, source=loc,
                        precisions=[c[0].precision for c in chosen], explains_origin=bool(failing))]

    def plan(self, ctx, finding):  # type: ignore[override]
        requests = super().plan(ctx, finding)
        return requests[:1]   # one precision is enough: the learning rate is precision-independent

    def check_checkpoint(self, trace: PostmortemTrace) -> list[Finding]:
        return _checkpoint_findings(trace)


def _checkpoint_findings(trace: PostmortemTrace) -> list[Finding]:
    """high-lr (documented with the scan rule): learning rates in param_groups that are non-finite, <= 0 or above 1."""
    bad = [g for g in trace.param_groups if isinstance(g.get("lr"), float)
           and (not math.isfinite(g["lr"]) or g["lr"] <= 0 or g["lr"] > 1.0)]
    if not bad:
        return []
    return [Finding("high-lr", Severity.WARNING.value, 0.6, f"extreme learning rate {num(bad[0]['lr'])} in the optimizer",
                    [f"param_group lr {num(g['lr'])}" for g in bad[:4]],
                    "check the scheduler: the saved learning rate is outside any sensible range")]
