"""Class targets outside the model's classes."""
from __future__ import annotations

from ...trace import ErrorCategory
from ..facts import data_place
from ..finding import Finding, Severity
from .base import Context, Rule


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

    Thresholds: none; a target outside [0, C) is a fact. Confidence 0.95.
    """

    id = "label-range"
    title = "class targets outside the model's classes"

    def check(self, ctx: Context) -> list[Finding]:
        findings = []
        for run in ctx.trace.runs:
            labels = next((s.labels for s in run.steps if s.labels and s.labels.out_of_range), None)
            err = run.error if run.error is not None and run.error.category == ErrorCategory.LABEL_GUARD.value else None
            # The loss's own IndexError ("Target 2 is out of bounds", a training script's run) is a
            # target outside [0, C) the run saw no labels fact for; other label errors are the dtype.
            dtype_error = labels is None and err is not None and err.exc_type not in ("LabelOutOfRange", "IndexError")
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
            fix = f"convert class targets to int64 {data_place(ctx.trace)}: `targets = targets.long()`"
            title = "class targets have the wrong dtype for the loss"
        elif labels is not None and labels.min >= 1 and labels.max == labels.num_classes:
            fix = (f"labels run 1..{labels.max}: shift them to 0..{labels.max - 1} {data_place(ctx.trace)} (`targets - 1`)")
            title = f"class targets reach {labels.max} but the model has {labels.num_classes} classes"
        elif labels is not None:
            fix = (f"make the output layer produce {labels.max + 1} classes, or remap the labels into "
                   f"0..{labels.num_classes - 1}; negative labels other than -100 must be removed")
            title = f"class targets reach {labels.max} but the model has {labels.num_classes} classes"
        else:
            fix = (f"remap the labels into 0..C-1 {data_place(ctx.trace)} (a 1-based dataset needs `y - 1`), or give "
                   "the output layer as many classes as the labels have")
            title = "the loss rejected a class target outside the model's classes"
        return [Finding(self.id, Severity.ERROR.value, 0.95, title, evidence, fix, source=loc,
                        precisions=[r.precision for r, *_ in findings], explains_origin=True)]
