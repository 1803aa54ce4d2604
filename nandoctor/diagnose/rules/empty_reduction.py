"""A reduction over zero elements."""
from __future__ import annotations

from ...trace import NonfiniteEvent
from ..evidence import at, at_origin, package
from ..facts import IGNORE_INDEX, batch_site, ignored_labels, library_frame, op_short, user_call_site, where
from ..finding import Finding, Severity
from .base import Context, OriginRule


class EmptyReduction(OriginRule):
    """What it detects: a mean or normalisation over zero elements: every target equal to
    `ignore_index`, an empty mask selecting nothing, a count that is zero.

    Why it produces NaN or Inf: the mean is sum / count = 0 / 0 = NaN. Cross-entropy with
    every target ignored returns NaN, and so do the gradients.

    Evidence used: the replay's first NaN born in a reduction (mean, nll_loss, a division by a
    count) whose input was empty or whose targets were all ignored: the step's label check, a
    batch tensor of labels that are all -100, or the op's own integer input. A library's loss
    counts too (Hugging Face divides the summed loss by `num_items_in_batch`, 0.0 / 0.0 when
    every label is -100); its line stays detail and the finding points at the user's batch.

    How to fix: skip the batch or the term when nothing is selected
    (`loss = x[mask].mean() if mask.any() else x.sum() * 0`), or divide by
    `count.clamp_min(1)`. When the loss is a library's, drop the examples without a supervised
    token before batching, or fix the truncation or collator that masked every label.

    Example: masked language modelling where a short batch has no masked token.

    Thresholds: none; a zero-element input or all targets equal to ignore_index is a fact.
    Confidence 0.9.
    """

    id = "empty-reduction"
    title = "reduction over zero elements"

    def explain_event(self, ctx: Context, event: NonfiniteEvent, group: list[NonfiniteEvent]) -> Finding:
        module = event.module
        user = where(event)
        labels = ignored_labels(event, ctx.trace)
        # The division of a library's loss (a Hugging Face model's `loss / num_items_in_batch`)
        # is not the user's to guard: the user's line is where the batch's labels were made.
        loc = user or batch_site(ctx.trace, event.precision, ("targets", "labels"), step=event.step)
        evidence = [f"{event.call or event.op or 'an op'}{at_origin(event)} produced NaN at step {event.step} "
                    f"({', '.join(e.precision for e in group)})"]
        if labels is not None:
            name, ignored, total = labels
            evidence.append(f"{ignored} of {total} labels in {name} equal ignore_index ({IGNORE_INDEX}): the loss "
                            "averages over zero targets")
        empty = [t for t in event.inputs if 0 in t.shape]
        if empty:
            evidence.append(f"its input has shape {empty[0].shape} (no elements)")
        elif op_short(event.op) == "div":
            evidence.append("a sum of 0 divided by a count of 0: the count of selected elements was 0")
        if user is None and labels is not None:
            made = f" (made at {loc})" if loc else ""
            fix = (f"every label of this batch{made} is {IGNORE_INDEX}, so the loss is a mean over nothing: drop "
                   "examples that have no supervised token before batching (e.g. `dataset.filter(lambda ex: "
                   f"any(l != {IGNORE_INDEX} for l in ex['labels']))`), or fix the truncation or collator that masks "
                   "every label")
        elif user is None:
            # The reduction is a library's (its file is not the user's to edit): the fix is to the
            # batch the user's call hands it.
            call = user_call_site(ctx.trace)
            lib = library_frame(event)
            fix = (f"the loss inside {package(lib) or 'library code'}{' (' + str(lib) + ')' if lib else ''} averaged over "
                   "zero elements (0 / 0): the batch your code hands it"
                   + (f" at {call}{' (`' + call.code + '`)' if call.code else ''}" if call else "")
                   + f" has nothing the loss counts (every label equal to ignore_index {IGNORE_INDEX}, an empty "
                   "mask): skip such batches before that call, or fix the truncation or collator that masks every label")
            if ctx.trace.framework == "huggingface":
                fix += "; with the Trainer, filter the dataset (`dataset.filter(...)`) before passing it as `train_dataset`"
            loc = loc or call
        else:
            fix = (f"guard the reduction{at(loc)} against selecting nothing: "
                   "`loss = x[mask].mean() if mask.any() else x.sum() * 0.0`, or divide by `count.clamp_min(1)`")
        title = (f"every label of the batch is {IGNORE_INDEX} (ignored): the loss is a mean over zero elements"
                 if user is None and labels is not None else f"mean over zero elements{at(loc)}")
        return Finding(self.id, Severity.ERROR.value, 0.9, title, evidence, fix, module=module, source=loc,
                       precisions=[e.precision for e in group], explains_origin=True, mechanism="empty-reduction")
