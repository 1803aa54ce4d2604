"""A reduction over zero elements."""
from __future__ import annotations

from ...trace import NonfiniteEvent
from ..evidence import at, code
from ..facts import batch_site, op_short
from ..finding import Finding, Severity
from .base import Context, OriginRule


class EmptyReduction(OriginRule):
    """What it detects: a mean or normalisation over zero elements: every target equal to
    `ignore_index`, an empty mask selecting nothing, a count that is zero.

    Why it produces NaN or Inf: the mean is sum / count = 0 / 0 = NaN. Cross-entropy with
    every target ignored returns NaN, and so do the gradients.

    Evidence used: the replay's first NaN born in a reduction (mean, nll_loss, a division by a
    count) whose input was empty or whose targets were all ignored.

    How to fix: skip the batch or the term when nothing is selected
    (`loss = x[mask].mean() if mask.any() else x.sum() * 0`), or divide by
    `count.clamp_min(1)`.

    Example: masked language modelling where a short batch has no masked token.

    Thresholds: none; a zero-element input or all targets equal to ignore_index is a fact.
    Confidence 0.9.
    """

    id = "empty-reduction"
    title = "reduction over zero elements"

    def explain_event(self, ctx: Context, event: NonfiniteEvent, group: list[NonfiniteEvent]) -> Finding:
        module = event.module
        # Inside a library's loss (a Hugging Face model), the user's line is where the labels are made.
        loc = event.user_source or batch_site(ctx.trace, event.precision, ("targets", "labels")) or event.source
        run = ctx.trace.run(event.precision)
        step = next((s for s in (run.steps if run else []) if s.step == event.step), None)
        evidence = [f"{event.op}{at(loc)}{code(loc)} produced NaN at step {event.step} "
                    f"({', '.join(e.precision for e in group)})"]
        if step and step.labels and step.labels.ignored:
            evidence.append(f"{step.labels.ignored} of {step.labels.total} targets equal ignore_index (-100)")
        empty = [t for t in event.inputs if 0 in t.shape]
        if empty:
            evidence.append(f"its input has shape {empty[0].shape} (no elements)")
        elif op_short(event.op) == "div":
            evidence.append("a sum of 0 divided by an integer count of 0: the count of selected elements was 0")
        fix = (f"guard the reduction{at(loc)} against selecting nothing: "
               "`loss = x[mask].mean() if mask.any() else x.sum() * 0.0`, or divide by `count.clamp_min(1)`")
        return Finding(self.id, Severity.ERROR.value, 0.9, f"mean over zero elements{at(loc)}",
                                evidence, fix, module=module, source=loc, precisions=[e.precision for e in group],
                                explains_origin=True, mechanism="empty-reduction")
