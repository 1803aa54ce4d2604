"""Softmax over a fully masked row."""
from __future__ import annotations

from ...trace import NonfiniteEvent
from ..evidence import at, at_origin
from ..facts import module_label, where
from ..finding import Finding, Severity
from .base import Context, OriginRule


class MaskedSoftmax(OriginRule):
    """What it detects: softmax (or log_softmax) over a row whose every entry is masked to -inf,
    e.g. a padding-only sequence, or a causal mask combined with a padding mask.

    Why it produces NaN or Inf: softmax subtracts the row max (-inf) and computes
    exp(-inf - -inf) = exp(NaN): the whole row becomes NaN, then the attention output, the
    loss and every gradient.

    Evidence used: the replay's first NaN, born in a softmax whose inputs held only deliberate
    -inf values (from `masked_fill(..., -inf)` or an explicit -inf mask).

    How to fix: fill with `torch.finfo(scores.dtype).min` instead of -inf (the row then gives a
    uniform distribution that a later mask can zero), or skip fully-masked rows
    (`torch.nan_to_num(probs)`; `F.scaled_dot_product_attention` handles them in recent torch).

    Example: `scores.masked_fill(pad_mask, float('-inf'))` for a batch row of padding only.

    Thresholds: none; the tracer marks the mask. Confidence 0.9.
    """

    id = "masked-softmax"
    title = "softmax over a fully masked row"

    def explain_event(self, ctx: Context, event: NonfiniteEvent, group: list[NonfiniteEvent]) -> Finding:
        module = event.module
        loc = where(event)
        inputs = [t for t in event.inputs if t.name != "scalar"]
        evidence = [f"{event.op} in {module_label(module, event.phase)}{at_origin(event)} produced NaN at step {event.step} "
                    f"({', '.join(e.precision for e in group)}) from an input holding only -inf masks"
                    + (f" ({inputs[0].inf} of its values are -inf)" if inputs else "")]
        if event.producer:
            evidence.append(f"the masked scores came from {event.producer.op}{at(event.producer.source)}")
        fix = (f"some rows are masked entirely{at(loc)}: fill masked positions with "
               "`torch.finfo(scores.dtype).min` instead of `float('-inf')`, or zero those rows after softmax "
               "(`probs = probs.masked_fill(mask.all(-1, keepdim=True), 0.0)`)")
        return Finding(self.id, Severity.ERROR.value, 0.9, f"softmax over a fully masked row{at(loc)}",
                                evidence, fix, module=module or None, source=loc, precisions=[e.precision for e in group],
                                explains_origin=True, mechanism="mask")
