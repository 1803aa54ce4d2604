"""A deliberate -inf mask that an op downstream turned into NaN or an unmasked Inf."""
from __future__ import annotations

from typing import Optional

from ...trace import NonfiniteEvent, OpRef
from ..evidence import at, at_origin, input_facts, precisions_of
from ..facts import module_label, op_short, where
from ..finding import Finding, Severity
from ..op_semantics import CONSTANT_OPS, MASK
from .base import Context, OriginRule

MASK_OPS = ("masked_fill", "index_put", "where", "full", "fill", "lift_fresh", "scatter", "copy")

# What each consumer does with the mask, and the change that keeps the mask harmless.
CONSUMERS = {
    "mul": ("0 * -inf = NaN: a zero weight (a target probability, a mask of 0) times a masked -inf log-probability",
            "zero the masked terms instead of multiplying them: `torch.where(mask, 0.0, p * logp)`, or mask with "
            "`torch.finfo(x.dtype).min` instead of -inf"),
    "sum": ("a sum over masked -inf log-probabilities is -inf (and NaN next to a +inf): label smoothing or an "
            "entropy term spreads weight onto the banned classes",
            "leave the masked classes out of the smoothing/entropy sum (`logp.masked_fill(banned, 0).sum(-1)`), or "
            "mask with `torch.finfo(x.dtype).min`"),
    "sub": ("-inf - (-inf) = NaN: a row whose maximum is the mask value itself (a hand-written logsumexp over a "
            "fully masked row)",
            "use `torch.logsumexp`, and give fully masked rows a finite value "
            "(`m = x.amax(-1, keepdim=True).clamp_min(torch.finfo(x.dtype).min)`)"),
    "add": ("-inf + inf = NaN: two masks of opposite sign meet",
            "combine masks as booleans first, then fill once with `torch.finfo(x.dtype).min`"),
    "logsumexp": ("logsumexp of a row that is entirely -inf is -inf: nothing in the row is selected",
                  "give every row at least one unmasked entry, or drop rows with nothing selected before the loss"),
    "kl_div": ("kl_div sums target * (log target - input); a masked -inf input with a target of 0 gives 0 * inf = NaN",
               "zero the masked terms before the reduction, or mask with `torch.finfo(x.dtype).min`"),
}


def _mask_site(event: NonfiniteEvent) -> Optional[OpRef]:
    """Where the mask was set: the tracer's record, else the producer when it is a masking op."""
    if event.mask_source is not None:
        return event.mask_source
    if event.producer is not None and op_short(event.producer.op).rstrip("_").startswith(MASK_OPS):
        return event.producer
    return None


class MaskedInf(OriginRule):
    """What it detects: a deliberate infinity (a mask set with `masked_fill(..., -inf)`,
    indexed assignment `logits[..., banned] = -inf`, `index_put_`, `torch.where(mask, x, -inf)`,
    `torch.full(..., -inf)`) that a later op turned into NaN or an unmasked Inf: a sum of -inf
    log-probabilities, `0 * -inf`, a KL or label-smoothing term over masked classes, a
    hand-written logsumexp over a fully masked row. (Softmax over a fully masked row is
    `masked-softmax`.)

    Why it produces NaN or Inf: -inf is harmless where softmax or max consumes it, but
    arithmetic on it is not: 0 * -inf and -inf - -inf are NaN, and a sum that includes a
    masked log-probability is -inf. The mask is not the bug; the op that consumed it is.

    Evidence used: the origin op, the statistics of its inputs (how many of them are -inf), the
    tracer's record of where the mask was set (`mask_source`, else the input's producer), and
    the consumer's op-semantics class `mask`.

    How to fix: keep the masked terms out of the arithmetic (`torch.where(mask, 0.0, p * logp)`,
    `logp.masked_fill(banned, 0)` before a smoothing sum), or mask with
    `torch.finfo(x.dtype).min` instead of -inf so every product and difference stays finite.

    Example: `logits[:, banned] = float('-inf')` then `F.cross_entropy(logits, y,
    label_smoothing=0.1)`: the smoothing term sums -inf log-probabilities of the banned classes.

    Thresholds: none. Confidence 0.85: the tracer marks the input as masked, so the
    mechanism is observed, not inferred.
    """

    id = "masked-inf"
    title = "a deliberate -inf mask turned into NaN"

    def explain_event(self, ctx: Context, event: NonfiniteEvent, group: list[NonfiniteEvent]) -> Finding:
        module = event.module
        loc = where(event)
        consumer = op_short(event.forward_op if event.phase == "backward" else (event.call or event.op))
        at_mask = consumer in CONSTANT_OPS
        if at_mask:
            consumer = "sum"      # the trace stopped at the mask itself: the usual consumer is a sum over classes
        kind = "NaN" if event.kind == "nan" else "Inf"
        mechanism, fix = CONSUMERS.get(consumer, (
            f"{consumer} combined a masked -inf with other values into {event.kind.upper()}",
            "apply the mask after the arithmetic (`masked_fill` on the result), or mask with "
            "`torch.finfo(x.dtype).min` instead of -inf"))
        masked_inputs = [t for t in event.inputs if t.inf]
        evidence = [f"the -inf mask set{at_origin(event)} reached the loss at step {event.step} "
                    f"({precisions_of(group)}); likely consumer: {mechanism}" if at_mask else
                    f"{event.call or event.op or 'an op'} in {module_label(module, event.phase)}{at_origin(event)} produced "
                    f"{kind} at step {event.step} ({precisions_of(group)}): {mechanism}"]
        if masked_inputs:
            evidence.append(f"{masked_inputs[0].name} held {masked_inputs[0].inf} deliberate infinities")
        facts = input_facts(event)
        if facts:
            evidence.append(facts)
        site = _mask_site(event)
        if site is not None:
            evidence.append(f"the mask was set by {site.op}{at(site.source)}")
        return Finding(self.id, Severity.ERROR.value, 0.85,
                                (f"a -inf mask set{at(loc)} reaches the loss" if at_mask
                                 else f"{consumer} turned a -inf mask into {kind}{at(loc)}"), evidence,
                                f"at {loc}: {fix}" if loc else fix, module=module or None, source=loc,
                                precisions=[e.precision for e in group], explains_origin=True, mechanism=MASK)
