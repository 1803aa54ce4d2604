"""Causes in the batches: non-finite values, unnormalised scale, class targets out of range."""
from __future__ import annotations

from ...trace import ErrorCategory, Phase
from ..facts import finite, num, where
from ..finding import Finding, Severity
from .base import Context, Rule


class DataNonfinite(Rule):
    """What it detects: NaN or Inf in a batch's inputs or targets, including values produced by
    preprocessing inside `get_batch` (a log of a zero feature, a division by a zero std).

    Why it produces NaN or Inf: one NaN input makes every activation it touches NaN, the loss
    NaN, every gradient NaN, and after one optimizer step every weight NaN: the run is lost
    for good, even though the model is fine.

    Evidence used: per-step NaN/Inf counts of every batch tensor (checked before the forward
    pass), and the replay of `get_batch` that finds the op that created the value.

    How to fix: repair the data at its source (the reported line), drop or impute rows with
    `torch.isfinite(x).all(dim=-1)`, or guard the preprocessing (`clamp_min(eps)` before a log,
    `std + eps` in a division). As a last resort, `torch.nan_to_num` on the batch.

    Example: `x = torch.log(raw)` in get_batch with raw values of 0 gives -inf features.
    """

    id = "data-nonfinite"
    title = "NaN/Inf in the training data"
    experiments = {"sanitise-batch": "finite", "skip-batch": "finite"}

    def check(self, ctx: Context) -> list[Finding]:
        runs = [r for r in ctx.trace.runs if r.first_nonfinite and r.first_nonfinite.phase == Phase.DATA.value]
        if not runs:
            return []
        event = runs[0].first_nonfinite
        assert event is not None
        loc = where(event)
        evidence = [f"step {event.step}: {event.detail or f'{event.tensor}: {event.count} non-finite elements'}"]
        if event.op and loc:
            evidence.append(f"created by {event.op} at {loc} inside get_batch"
                            + (f" (input min {num(event.inputs[0].min)}, {event.inputs[0].zeros} zeros, "
                               f"{event.inputs[0].negatives} negatives)" if event.inputs else ""))
        fix = (f"repair the values at {loc}: `{loc.code}` produces them" if loc and loc.code else
               f"filter batch {event.step} in get_batch")
        fix += ("; guard the op (e.g. `torch.log(x.clamp_min(1e-6))`), or drop non-finite rows with "
                "`mask = torch.isfinite(x).all(dim=-1); x, y = x[mask], y[mask]`")
        return [Finding(self.id, Severity.ERROR.value, 0.95, f"{event.tensor or 'a batch tensor'} holds "
                        f"{event.count} NaN/Inf values at step {event.step}", evidence, fix,
                        source=loc, precisions=[r.precision for r in runs], explains_origin=True)]


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
                        evidence, f"normalise {name} in get_batch" + (f" (made at {loc})" if loc else "")
                        + ": subtract the training mean and divide by the std (for targets too, and un-normalise "
                        "predictions), or divide images by 255", source=loc,  # type: ignore[arg-type]
                        precisions=[r.precision for r in (failing or ctx.trace.runs)], explains_origin=bool(failing))]


def _diverged(run) -> bool:
    losses = finite(s.loss for s in run.steps)
    return len(losses) >= 2 and losses[0] > 0 and losses[-1] / losses[0] > 1e3


def _skips(run) -> int:
    return sum(1 for s in run.steps if s.skipped)


class LabelRange(Rule):
    """What it detects: class targets outside `[0, num_classes)` (other than ignore_index -100),
    or class targets of the wrong dtype for the loss.

    Why it produces NaN or Inf: cross-entropy indexes the logits with each target. On CPU an
    out-of-range target raises; on CUDA it is a device-side assert that kills the process, or
    with some kernels reads garbage and yields NaN/Inf losses.

    Evidence used: min/max of integer targets against the logits' class dimension, checked
    after the forward pass and before the loss; exceptions raised by the loss.

    How to fix: remap labels to 0..C-1 (a 1-based dataset needs `y - 1`), or give the output
    layer as many classes as the data has; use `dtype=torch.long` targets for cross_entropy.

    Example: 10 classes labelled 1..10 with `nn.Linear(d, 10)`.
    """

    id = "label-range"
    title = "class targets outside the model's classes"

    def check(self, ctx: Context) -> list[Finding]:
        findings = []
        for run in ctx.trace.runs:
            labels = next((s.labels for s in run.steps if s.labels and s.labels.out_of_range), None)
            err = run.error if run.error is not None and run.error.category == ErrorCategory.LABEL_GUARD.value else None
            dtype_error = labels is None and err is not None and err.exc_type != "LabelOutOfRange"
            if labels is None and err is None:
                continue
            findings.append((run, labels, err, dtype_error))
        if not findings:
            return []
        run, labels, err, dtype_error = findings[0]
        evidence = []
        if labels is not None:
            evidence.append(f"step {run.steps[-1].step}: {labels.out_of_range} of {labels.total} targets outside "
                            f"[0, {labels.num_classes}); targets range {labels.min}..{labels.max}")
        if err is not None:
            evidence.append(f"{err.exc_type}: {err.message}")
        loc = err.user_source if err else None
        target_site = next((b.source for s in run.steps for b in s.batch if b.source and b.name.startswith("targets")), None)
        loc = loc or target_site
        if dtype_error:
            fix = "convert class targets to int64 in get_batch: `targets = targets.long()`"
            title = "class targets have the wrong dtype for the loss"
        elif labels is not None and labels.min >= 1 and labels.max == labels.num_classes:
            fix = (f"labels run 1..{labels.max}: shift them to 0..{labels.max - 1} in get_batch (`targets - 1`)")
            title = f"class targets reach {labels.max} but the model has {labels.num_classes} classes"
        elif labels is not None:
            fix = (f"make the output layer produce {labels.max + 1} classes, or remap the labels into "
                   f"0..{labels.num_classes - 1}; negative labels other than -100 must be removed")
            title = f"class targets reach {labels.max} but the model has {labels.num_classes} classes"
        else:
            fix = "check the targets' range against the number of classes"
            title = "the loss rejected the class targets"
        return [Finding(self.id, Severity.ERROR.value, 0.95, title, evidence, fix, source=loc,
                        precisions=[r.precision for r, *_ in findings], explains_origin=True)]


class UserCodeError(Rule):
    """What it detects: an exception raised by the user's own code during a training step
    (build_model, get_batch, forward, loss, backward, optimizer).

    Why it produces NaN or Inf: it does not; it stops training. It is reported so the scan
    explains every precision run it could not finish, pointing at the user's line.

    Evidence used: the exception's type and message and the user frames of its traceback.

    How to fix: as the message says, at the reported line. An error only in the 16-true or
    bf16-true runs usually means forward creates float32 tensors (`torch.zeros(n)`) that
    meet low-precision ones: create them with `dtype=x.dtype, device=x.device`.

    Example: `RuntimeError: mat1 and mat2 must have the same dtype` in a bf16-true run.
    """

    id = "user-error"
    title = "the model's code raised an exception"

    def check(self, ctx: Context) -> list[Finding]:
        errors = [r for r in ctx.trace.runs if r.error is not None and r.error.category == ErrorCategory.USER_CODE.value]
        if not errors:
            return []
        by_message: dict[str, list] = {}
        for run in errors:
            assert run.error is not None
            by_message.setdefault(f"{run.error.exc_type}: {run.error.message}", []).append(run)
        findings = []
        for message, runs in by_message.items():
            err = runs[0].error
            loc = err.user_source or err.source
            true_only = all(r.precision.endswith("-true") and r.precision != "32-true" for r in runs)
            dtype_clash = "dtype" in message or "scalar type" in message
            fix = f"fix the exception raised at {loc}" if loc else "fix the exception raised in the model file"
            if true_only and dtype_clash:
                fix = (f"{loc or 'forward'} mixes dtypes under pure 16-bit weights: create tensors with "
                       "`dtype=x.dtype` (not `.float()` or default float32), or do not use "
                       + "/".join(r.precision for r in runs) + " for this model")
            severity = Severity.WARNING if true_only else Severity.ERROR
            findings.append(Finding(self.id, severity.value, 0.9,
                                    f"{err.exc_type} in {err.phase} ({', '.join(r.precision for r in runs)})",
                                    [message] + [f"called from {f} `{f.code}`" for f in err.frames[-3:]],
                                    fix, source=loc, precisions=[r.precision for r in runs],
                                    explains_origin=not true_only))
        return findings
