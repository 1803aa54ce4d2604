"""A learning rate too high for the loss surface."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from ...trace import NonfiniteEvent, PostmortemTrace, RunTrace, SourceLocation, StepRecord
from ...trace.numbers import num
from ..facts import command_line_flag, failed_later, module_label, optimizer_site, refuted
from ..finding import Finding, Severity
from ..ownership import lr_at, owned_events
from .base import Context, Rule

# A loss this many times its lowest earlier value has risen by orders of magnitude: no noisy
# batch does that, a run that overshoots does. Read over a watched run's history window.
LOSS_ORDERS = 100.0
# A gradient norm that at least doubled over that window grew; less is a batch's noise, or a
# clipped run's norm held at its clip (minGPT clips at 1: "grew from 1 to 1" said nothing).
GRAD_NORM_GROWTH = 2.0
# A schedule that hands the optimizer a non-finite or negative rate: scaling that rate by 1/10
# (the lower-lr experiment) leaves it non-finite or negative, so the experiment cannot answer.
SCHEDULE = "schedule"

# The learning rates each optimizer family is commonly run at (low, high): a re-trained lr that
# stayed finite for a few steps but sits far above `high` is no setting to propose on its own.
USUAL_LR: dict[str, tuple[float, float]] = {
    **{name: (1e-5, 1e-2) for name in ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "SparseAdam",
                                        "FusedAdam", "AdamW8bit", "Adam8bit", "Lamb", "LAMB")},
    "SGD": (1e-3, 1.0), "RMSprop": (1e-5, 1e-2), "Adagrad": (1e-3, 1e-1),
}


def usual_range_note(optimizer: dict[str, Any], lr: float) -> str:
    """A note when `lr` is over 10x the top of the optimizer's usual range, else ''."""
    name = str(optimizer.get("name") or "")
    usual = USUAL_LR.get(name)
    if usual is None or not lr > 10 * usual[1]:
        return ""
    return (f"; {lr:.0e} is still over 10x the top of {name}'s usual range ({usual[0]:.0e} to {usual[1]:.0e}), "
            f"so start from {usual[1]:.0e} or your recipe's value for a long run")


@dataclass
class _Divergence:
    """What one run shows of a too-high learning rate."""
    run: RunTrace
    ratio: float = 0.0                  # largest update ratio ||dw||/||w||
    ratio_where: str = ""               # its module ("" for the whole model, from the history)
    ratio_at: int = -1
    growth: float = 1.0                 # largest rise of the loss over its lowest earlier value
    low: Optional[StepRecord] = None
    high: Optional[StepRecord] = None
    in_history: bool = False            # the rise (or the large updates) happened before the replayed step


def _max_update(run: RunTrace) -> tuple[float, str, int]:
    """Largest finite update ratio: per layer over the run's steps, whole-model over its history
    and over steps a watched run recorded (`nandoctor run`)."""
    best, where, at = 0.0, "", -1
    for layer in run.layers:
        for i, v in enumerate(layer.series.get("update_ratio", [])):
            if v is not None and math.isfinite(v) and v > best:
                best, where, at = v, layer.module, run.start_step + i
    for record in list(run.history) + list(run.steps):
        v = record.update_ratio
        if v is not None and math.isfinite(v) and v > best:
            best, where, at = v, "", record.step
    return best, where, at


def _loss_rise(records: list[StepRecord]) -> tuple[float, Optional[StepRecord], Optional[StepRecord]]:
    """The largest rise over the lowest loss seen before it: a spike counts even when the run
    settles afterwards (a too-high peak lr that killed every ReLU ends on a flat plateau)."""
    points = [r for r in records if r.loss is not None and math.isfinite(r.loss)]
    if len(points) < 2:
        return 1.0, None, None
    low, best = points[0], (1.0, points[0], points[-1])
    for record in points[1:]:
        assert low.loss is not None and record.loss is not None
        rise = (math.inf if record.loss > 0 else 1.0) if low.loss <= 0 else record.loss / low.loss
        if rise > best[0]:
            best = (rise, low, record)
        if record.loss < low.loss:
            low = record
    return best


def _divergence(run: RunTrace, limit: float) -> _Divergence:
    ratio, where, at = _max_update(run)
    growth, low, high = _loss_rise(list(run.history) + list(run.steps))
    before = run.start_step
    in_history = ((low is not None and low.step < before and growth >= LOSS_ORDERS)
                  or (ratio > limit and at < before))
    return _Divergence(run, ratio, where, at, growth, low, high, in_history)


def _optimizer_lr(ctx: Context, event: NonfiniteEvent) -> Finding:
    """The optimizer step itself made the non-finite value from finite gradients: the learning
    rate it was handed is non-finite (a schedule dividing by 0 at step 0), negative (a decay
    past its end), or so large that the update overflows."""
    run = ctx.trace.run(event.precision)
    lr = lr_at(run, event.step)
    recorded = [r for r in (run.steps if run else []) if r.lr is not None]
    if recorded and event.step > recorded[-1].step:
        lr = recorded[-1].lr          # the replay went past the recorded steps: the last lr the run recorded
    configured = run.optimizer.get("lr") if run else None
    shown = configured if isinstance(configured, (int, float)) and not math.isfinite(configured) else lr
    # The replay names the user's line that made the non-finite value (the schedule's division),
    # else the line that built the scheduler or the optimizer.
    loc = event.user_source or ctx.trace.functions.get("build_scheduler") or _optimizer_location(ctx)
    where = f" at {loc}" if loc else ""
    evidence = [f"step {event.step}: the optimizer step ran with learning rate {num(shown)}"
                + (f" and made {event.parameter} non-finite" if event.parameter else " and made the parameters non-finite"),
                "the gradients of this step were finite: the update itself is " + ("infinite" if event.kind == "inf" else "NaN")]
    negative = _first_negative_lr(run)
    mechanism = "overflow"
    if shown is not None and not math.isfinite(shown):
        fix = (f"the learning-rate schedule{where} returns a non-finite factor at step {event.step}: guard its "
               "division (e.g. `1 / math.sqrt(max(step, 1))`, warm-up from step 1)")
        title = f"the learning rate is {num(shown)} at step {event.step}"
        mechanism = SCHEDULE
    elif negative is not None:
        return _negative_lr(ctx, run, negative, event)
    else:
        fix = (f"the learning rate reached {num(shown)} by step {event.step}: bound the schedule{where} (cap its "
               f"factor) and lower the learning rate {_lr_setting(ctx, run) if run else ''}".rstrip())
        title = f"the learning rate is {num(shown)} at step {event.step}: the update overflows"
    return Finding("high-lr", Severity.ERROR.value, 0.9, title, evidence, fix, source=loc, precisions=[event.precision],
                   explains_origin=True, mechanism=mechanism)


def _first_negative_lr(run: Optional[RunTrace]) -> Optional[StepRecord]:
    """The first recorded step whose learning rate is below 0: a schedule past its end."""
    if run is None:
        return None
    return next((r for r in list(run.history) + list(run.steps) if r.lr is not None and r.lr < 0), None)


def _negative_lr(ctx: Context, run: RunTrace, first: StepRecord, event: Optional[NonfiniteEvent]) -> Finding:
    """A learning rate below 0 turns descent into ascent: a schedule bug, never 'too high'."""
    loc = ctx.trace.functions.get("build_scheduler") or (event.user_source if event is not None else None) \
        or _optimizer_location(ctx)
    previous = [r for r in list(run.history) + list(run.steps) if r.step < first.step and r.lr is not None]
    evidence = [f"the learning rate is {num(first.lr)} at step {first.step}"
                + (f" (it was {num(previous[-1].lr)} at step {previous[-1].step})" if previous else "")
                + ": a negative step size climbs the loss instead of descending it"]
    if event is not None:
        evidence.append(f"{run.precision} went non-finite at step {event.step} in {event.phase}"
                        + (f" ({event.call or event.op or 'an op'})" if event.op else ""))
    fix = (f"the learning-rate schedule{' at ' + str(loc) + (' (`' + loc.code + '`)' if loc.code else '') if loc else ''} "
           f"returns a negative factor from step {first.step}: clamp it at 0 (`max(0.0, 1 - step / total)`), "
           "or make the schedule's length match the number of training steps")
    return Finding("high-lr", Severity.ERROR.value, 0.9,
                   f"the learning-rate schedule goes negative ({num(first.lr)} at step {first.step})", evidence, fix,
                   source=loc, precisions=[run.precision], explains_origin=True, mechanism=SCHEDULE)


def _optimizer_location(ctx: Context) -> Optional[SourceLocation]:
    return optimizer_site(ctx.trace)


def _lr_setting(ctx: Context, run: RunTrace) -> str:
    """Where the user sets the learning rate, in words: a line, a trainer argument or a config key."""
    flag = command_line_flag(ctx.trace, ("lr", "learning"), _configured_lr(run))
    if flag is not None:
        return f"with the script's own argument (`{flag}` on the command line)"
    framework = ctx.trace.framework
    if framework == "huggingface":
        return "with `--learning_rate` (`TrainingArguments(learning_rate=...)`)"
    loc = _optimizer_location(ctx)
    if loc is not None:
        return f"where the optimizer is built ({loc})" if ctx.trace.loop is not None else f"in build_optimizer ({loc})"
    if ctx.trace.loop is not None:
        return "where your script constructs the optimizer"
    framework = ctx.trace.framework
    if framework == "huggingface":
        return "with `--learning_rate` (`TrainingArguments(learning_rate=...)`)"
    if framework == "lightning":
        return "in your LightningModule's `configure_optimizers()`"
    if framework is not None:
        name = run.optimizer.get("name") or "the optimizer"
        return f"where your training script constructs {name}"
    return "(config `optimizer.lr` or `--lr`)"


def _configured_lr(run: RunTrace) -> Optional[float]:
    """The lr the run was configured with: its peak (a warm-up climbs to the flag's value)."""
    recorded = [r.lr for r in list(run.history) + list(run.steps) if r.lr is not None and math.isfinite(r.lr)]
    configured = run.optimizer.get("lr")
    candidates = recorded + ([configured] if isinstance(configured, (int, float)) else [])
    return max(candidates) if candidates else None


def _lr_of(record: Optional[StepRecord]) -> Optional[float]:
    if record is not None and record.lr is not None and math.isfinite(record.lr):
        return record.lr
    return None


def _history_evidence(d: _Divergence) -> list[str]:
    """The watched run's own numbers: the loss, gradient norm and parameter norm over the rise."""
    run, low, high = d.run, d.low, d.high
    evidence = []
    if low is None or high is None or low.step >= run.start_step:
        return evidence
    window = [r for r in list(run.history) + list(run.steps) if low.step <= r.step <= high.step]
    lrs = sorted({float(num(r.lr)) for r in window if r.lr is not None and math.isfinite(r.lr)})
    at_lr = (f" at learning rate {num(lrs[0])}" if len(lrs) == 1 else
             f" while the learning rate went from {num(_lr_of(low))} to {num(_lr_of(high))}" if lrs else "")
    replayed = " (the replayed step)" if high.step == run.start_step else ""
    evidence.append(f"the watched run's loss rose from {num(low.loss)} at step {low.step} to {num(high.loss)} at step "
                    f"{high.step}{replayed} ({num(d.growth)}x){at_lr}, before step {run.start_step} turned non-finite")
    if low.grad_norm is not None and high.grad_norm is not None and low.grad_norm > 0 \
            and high.grad_norm >= GRAD_NORM_GROWTH * low.grad_norm:
        evidence.append(f"its gradient norm grew from {num(low.grad_norm)} to {num(high.grad_norm)} over the same steps")
    if low.param_norm is not None and high.param_norm is not None and high.param_norm > low.param_norm:
        evidence.append(f"its parameter norm grew from {num(low.param_norm)} to {num(high.param_norm)}")
    return evidence


class HighLearningRate(Rule):
    """What it detects: a learning rate too high for the loss surface: parameter updates that
    are a large fraction of the weights (update ratio ||dw||/||w|| far above ~1e-3), a loss that
    grows step after step (or by orders of magnitude over a watched run's recent history), and
    a run that ends non-finite after a few healthy steps.

    Why it produces NaN or Inf: each overshooting step grows the weights; activations and
    gradients grow with them until a matmul, an exp or a softmax overflows.

    Evidence used: per-layer update ratios before the failing step, the loss trend, the step
    at which the run failed, and re-runs with the learning rate divided by 10 and 100. For a
    crash bundle's replay, the watched run's history window: its loss, gradient norm, update
    ratio and parameter norm step by step, and the learning rate each step used. A divergence
    that the history shows before the replayed step ranks as an upstream cause: the op that
    finally overflowed is its symptom. The lr experiments are not run for it: from weights
    that have already diverged, the failing step fails whatever its own learning rate.

    A learning rate below 0 (a linear decay past its end) is a schedule bug, not a rate too
    high: the finding names the schedule's line and the first step whose rate is negative. An
    optimizer step that overflows from finite gradients, with no 0 to divide by, is the step
    size's doing too.

    How to fix: divide the learning rate by the factor the experiment confirmed (or by 10 from
    the one the history quotes); add warmup and gradient clipping for long runs. A negative
    rate: clamp the schedule's factor at 0, or match its length to the run's.

    Example: SGD with lr=5 on a small MLP: update ratio 0.9 at step 2, loss 1e3 at step 4, NaN at 6.

    Thresholds: `thresholds.update_ratio_high` (0.1): healthy training moves weights by ~1e-3 of
    their norm per step (Karpathy's rule of thumb); 100x that overshoots. A loss growth of 10x
    counts as divergence; in a watched run's history, a loss 100x its lowest earlier value is
    one on its own (orders of magnitude, not noise). Confidence 0.5 + 0.15 (ratio 10x over the
    threshold) + 0.1 (diverging loss) + 0.1 (a rise of 100x in the history), capped at 0.85; 0.9
    for an infinite lr; +0.2 when lr/10 confirms.
    """

    id = "high-lr"
    title = "learning rate too high"
    experiments = {"lower-lr": "finite"}

    def check(self, ctx: Context) -> list[Finding]:
        owned = owned_events(ctx.trace, self.id)
        if owned:
            return [_optimizer_lr(ctx, owned[0])]
        limit = ctx.thresholds["update_ratio_high"]
        failing: list[_Divergence] = []
        warned: list[_Divergence] = []
        for run in ctx.trace.runs:
            event = run.first_nonfinite
            if event is not None and (event.phase == "data" or (event.phase == "init" and not run.history)):
                continue
            d = _divergence(run, limit)
            # Failing "after healthy steps": later than the run's first step, or at a replayed
            # step that the watched run reached after its history window.
            failed = event is not None and (event.step > run.start_step or bool(run.history))
            big_updates = d.ratio > limit
            if failed and (big_updates or (d.in_history and d.growth >= LOSS_ORDERS)):
                failing.append(d)
            elif run.status == "ok" and big_updates and d.growth > 10:
                warned.append(d)
        chosen = failing or warned
        negative = [(r, _first_negative_lr(r)) for r in ctx.trace.runs if r.first_nonfinite is not None]
        negative = [(r, first) for r, first in negative if first is not None and first.step <= r.first_nonfinite.step]
        if negative:
            run, first = negative[0]
            return [_negative_lr(ctx, run, first, run.first_nonfinite)]
        if not chosen:
            return []
        d = max(chosen, key=lambda c: (c.ratio, c.growth))
        run = d.run
        # The lr in force when the run diverged (a warm-up or schedule changes it step by step):
        # the one the history recorded at the loss's peak; else the step before the failure. A
        # run that stayed finite diverged somewhere in its schedule: its peak lr is the suspect.
        recorded = [s.lr for s in run.steps if s.lr is not None and math.isfinite(s.lr)]
        lr = (_lr_of(d.high) if d.in_history and _lr_of(d.high) is not None
              else lr_at(run, run.first_nonfinite.step - 1) if run.first_nonfinite
              else max(recorded) if recorded else lr_at(run, run.start_step + run.steps_run - 1))
        first = run.history[0] if run.history else None
        first_lr = _lr_of(first) if first is not None else lr_at(run, run.start_step)
        first_step = first.step if first is not None else run.start_step
        evidence = []
        if lr is not None and first_lr is not None and num(lr) != num(first_lr):
            evidence.append(f"the schedule raised the learning rate from {num(first_lr)} at step {first_step} to "
                            f"{num(lr)} before the divergence")
        if d.ratio > limit:
            scope = module_label(d.ratio_where) if d.ratio_where else "the whole model"
            evidence.append(f"update ratio {num(d.ratio)} at step {d.ratio_at} in {scope} "
                            f"(healthy runs stay near 1e-3; threshold {num(limit)})")
        history = _history_evidence(d)
        evidence.extend(history)
        if not history and d.low is not None and d.growth > 1:
            evidence.append(f"loss rose from a minimum of {num(d.low.loss)} to {num(d.high.loss if d.high else None)} "
                            f"({num(d.growth)}x) before "
                            + (f"turning non-finite at step {run.first_nonfinite.step}" if run.first_nonfinite else "the end"))
        others = [f"{c.run.precision} at step {c.run.first_nonfinite.step}" for c in failing
                  if c.run is not run and c.run.first_nonfinite]
        if others:
            evidence.append("also failing: " + ", ".join(others))
        known = isinstance(lr, (int, float))
        shown = num(lr) if known else "of the update"
        new_lr = (f"{lr / 10:.0e} (untested: no re-run of this report confirmed a learning rate)" if known
                  else "a tenth")
        # Propose an lr an experiment confirmed (the largest that stayed finite), never one refuted.
        tried = [e for e in ctx.trace.experiments if e.id == "lower-lr" and e.outcome in ("finite", "nonfinite")
                 and isinstance(e.change.get("lr_scale"), (int, float))]
        # A finite run shorter than where another lower lr failed tells no fix from a delay.
        tried = [e for e in tried if failed_later(e, tried) is None]
        finite_scales = [e.change["lr_scale"] for e in tried if e.outcome == "finite"]
        delayed = [e for e in tried if e.outcome == "nonfinite" and e.first_bad_step is not None
                   and run.first_nonfinite is not None and e.first_bad_step > run.first_nonfinite.step]
        if known and finite_scales:
            new_lr = (f"{lr * max(finite_scales):.0e} (re-trained with it, the run stayed finite"
                      + usual_range_note(run.optimizer, lr * max(finite_scales)) + ")")
        elif known and delayed:
            e = delayed[0]
            new_lr = (f"well below {lr * e.change['lr_scale']:.0e} (re-trained at {lr * e.change['lr_scale']:.0e}, "
                      f"the run failed later, at step {e.first_bad_step}: a lower learning rate only delays it; "
                      "look for a value the loss pushes the same way every step)")
        elif known and tried:
            smallest = min(e.change["lr_scale"] for e in tried)
            new_lr = (f"well below {lr * smallest:.0e} (re-trained at {lr * smallest:.0e}, the run still "
                      "failed: check the data and the model too)")
        loop = ctx.trace.loop
        if not known and loop is not None and loop.hand_written_update:
            # No optimizer to read the lr from: the step size lives in the loop's own update.
            update = loop.update_site
            fix = ("divide the step size of the loop's hand-written update by 10 ("
                   + (f"{update}: `{update.code}`" if update is not None and update.code else
                      "the `lr` in `p.data.add_(p.grad, alpha=-lr)`") + ")")
        else:
            fix = (f"lower the learning rate from {shown} to {new_lr} {_lr_setting(ctx, run)}" if known else
                   f"lower the learning rate to a tenth {_lr_setting(ctx, run)}")
        clipped = refuted(ctx.trace, "clip-grad")
        fix += "; add warmup" + ("" if clipped is not None else
                                 " and " + ("gradient clipping" if loop is not None else "`grad_clip`")) + " for long runs"
        severity = Severity.ERROR if failing else Severity.WARNING
        confidence = (0.5 + (0.15 if d.ratio > 10 * limit else 0) + (0.1 if d.growth > 10 else 0)
                      + (0.1 if d.in_history and d.growth >= LOSS_ORDERS else 0))
        return [Finding(self.id, severity.value, min(confidence, 0.85),
                        (f"learning rate {shown} is too high: the run diverges" if known else
                         "the learning rate is too high: the run diverges"), evidence, fix,
                        module=d.ratio_where or None, source=_optimizer_location(ctx),
                        precisions=[c.run.precision for c in chosen], explains_origin=bool(failing),
                        upstream=bool(failing) and d.in_history)]

    def plan(self, ctx, finding):  # type: ignore[override]
        if finding.mechanism == SCHEDULE:
            return []
        # One precision is enough: the learning rate is precision-independent. A run whose own
        # learning rate never acted before it failed (a replayed step that fails before its
        # optimizer step, from weights the history already diverged) cannot answer the question.
        requests = [r for r in super().plan(ctx, finding) if _lr_acted(ctx.trace.run(r.precision), ctx.trace)]
        return requests[:1]

    def check_checkpoint(self, trace: PostmortemTrace) -> list[Finding]:
        return _checkpoint_findings(trace)


def _lr_acted(run: Optional[RunTrace], trace: Optional[Any] = None) -> bool:
    """Can a lower lr change this run's failure? Only if the run (or an experiment) trains from a
    state before the failing step: `nandoctor run` re-trains from a rolling snapshot."""
    event = run.first_nonfinite if run is not None else None
    if event is None:
        return False
    loop = getattr(trace, "loop", None)
    rewind = loop is not None and loop.rewind_from is not None and loop.rewind_from < event.step
    return event.step > run.start_step or event.phase == "optimizer" or rewind


def _checkpoint_findings(trace: PostmortemTrace) -> list[Finding]:
    """high-lr (documented with the scan rule): learning rates in param_groups that are non-finite, <= 0 or above 1."""
    bad = [g for g in trace.param_groups if isinstance(g.get("lr"), float)
           and (not math.isfinite(g["lr"]) or g["lr"] <= 0 or g["lr"] > 1.0)]
    if not bad:
        return []
    return [Finding("high-lr", Severity.WARNING.value, 0.6, f"extreme learning rate {num(bad[0]['lr'])} in the optimizer",
                    [f"param_group lr {num(g['lr'])}" for g in bad[:4]],
                    "check the scheduler: the saved learning rate is outside any sensible range")]
