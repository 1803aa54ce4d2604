"""Numerically unsafe ops: domain edges in forward, singular derivatives, masked softmax, 0/0 reductions."""
from __future__ import annotations

from typing import Optional

from ...trace import NonfiniteEvent, SourceLocation
from ..facts import SOFTMAX_OPS, batch_site, UNSTABLE_OPS, is_empty_reduction, module_label, num, op_short, origin_events, where
from ..finding import Finding, Severity
from .base import Context, Rule


def _at(loc: Optional[SourceLocation]) -> str:
    return f" at {loc}" if loc else ""


def _code(loc: Optional[SourceLocation]) -> str:
    return f" (`{loc.code}`)" if loc and loc.code else ""


def _input_facts(event: NonfiniteEvent) -> str:
    tensors = [t for t in event.inputs if t.name != "scalar"]
    if not tensors:
        return ""
    parts = []
    for t in tensors[:2]:
        bits = [f"min {num(t.min)}", f"max {num(t.max)}"]
        if t.zeros:
            bits.append(f"{t.zeros} zeros")
        if t.negatives:
            bits.append(f"{t.negatives} negatives")
        if t.inf:
            bits.append(f"{t.inf} inf")
        parts.append(f"{t.name} [{', '.join(bits)}]")
    return "inputs: " + "; ".join(parts)


def _group(events: list[NonfiniteEvent]) -> dict[tuple, list[NonfiniteEvent]]:
    """The same op at the same line in several precisions is one finding."""
    groups: dict[tuple, list[NonfiniteEvent]] = {}
    for e in events:
        loc = where(e)
        groups.setdefault((e.op, e.module, str(loc) if loc else None, e.phase), []).append(e)
    return groups


def unstable_fix(event: NonfiniteEvent) -> str:
    name = op_short(event.op)
    loc = where(event)
    producer = op_short(event.producer.op) if event.producer else ""
    tensors = [t for t in event.inputs if t.name != "scalar"]
    first = tensors[0] if tensors else None
    at = _at(loc)
    if name in ("log", "log2", "log10") and producer in SOFTMAX_OPS:
        return f"replace `torch.log(torch.softmax(x, dim))`{at} with `torch.log_softmax(x, dim)` (or pass logits to `F.cross_entropy`)"
    if name in ("log", "log2", "log10") and (producer == "sigmoid" or (loc is not None and "sigmoid" in loc.code)):
        return f"replace `torch.log(torch.sigmoid(x))`{at} with `F.logsigmoid(x)`, or use `nn.BCEWithLogitsLoss` on the logits"
    if name in ("log", "log2", "log10", "log1p", "logit", "xlogy"):
        return f"keep the argument positive{at}: `torch.log(x.clamp_min(1e-6))` (the input reached {num(first.min) if first else '0'})"
    if name in ("exp", "exp2", "expm1", "sinh", "cosh"):
        return (f"exp overflows for inputs above ~88.7 in float32 (~11.1 in float16); the input reached "
                f"{num(first.max) if first else 'n/a'}{at}: subtract the max first (`torch.exp(x - x.amax(-1, keepdim=True))`), "
                "or use `torch.logsumexp` / `F.softplus` / `torch.softmax`")
    if name in ("div", "true_divide", "reciprocal", "floor_divide", "fmod", "remainder"):
        denominator = tensors[1] if name != "reciprocal" and len(tensors) > 1 else first
        zeros = denominator.zeros if denominator else 0
        return (f"the denominator{at} reached 0 ({zeros} zero elements): add an epsilon (`x / (d + 1e-6)`) "
                "or clamp it (`d.clamp_min(1e-6)`)")
    if name in ("sqrt", "rsqrt", "pow"):
        return (f"the input{at} went negative (min {num(first.min) if first else 'n/a'}): clamp it first "
                "(`torch.sqrt(x.clamp_min(0) + 1e-12)`); fractional powers of negatives are NaN")
    if name in ("acos", "asin", "atanh", "acosh"):
        return (f"the input{at} left [-1, 1] (min {num(first.min) if first else 'n/a'}, max {num(first.max) if first else 'n/a'}): "
                "clamp it (`x.clamp(-1 + 1e-6, 1 - 1e-6)`), e.g. after a cosine similarity")
    if name in ("std", "var", "std_mean", "var_mean"):
        return (f"the std/var{at} is over a single element (the unbiased estimate divides by n-1 = 0): "
                "use `correction=0` / `unbiased=False`, or reduce over more than one sample")
    if event.masked_input:
        return (f"the op{at} combines a -inf mask with other values (-inf * 0 or -inf + inf): apply the mask "
                "with `masked_fill` after the arithmetic, or use `torch.finfo(x.dtype).min` instead of -inf")
    return f"guard the op{at} against its domain edge (clamp the input, add an epsilon)"


class UnstableOp(Rule):
    """What it detects: a numerically unsafe op at its domain edge in the forward pass or the
    loss: log of 0 or of a negative, exp overflow, division by ~0, sqrt/pow of negatives,
    acos/asin outside [-1, 1], the log of a softmax/sigmoid, the std of one sample.

    Why it produces NaN or Inf: these ops return -inf, inf or NaN for perfectly finite inputs
    at their domain edge; the non-finite value then flows into the loss and every gradient.

    Evidence used: the replay's first op whose output was non-finite while every input was
    finite, its input statistics (min, max, zeros, negatives), the op that produced its input,
    and whether the same step still fails in float64 (a math-domain problem, not precision).

    How to fix: use the fused, stable form (`log_softmax`, `logsigmoid`, `logsumexp`,
    `BCEWithLogitsLoss`), or clamp the input / add an epsilon at the reported line.

    Example: `torch.log(torch.softmax(logits, -1))` underflows to log(0) = -inf once a class
    probability rounds to 0; `torch.log_softmax(logits, -1)` never does.
    """

    id = "unstable-op"
    title = "numerically unstable op"
    experiments = {"step-fp64": "nonfinite"}
    confirm_only = frozenset({"step-fp64"})

    def check(self, ctx: Context) -> list[Finding]:
        events = [e for e in origin_events(ctx.trace)
                  if e.phase in ("forward", "loss") and op_short(e.op) in UNSTABLE_OPS
                  and not (e.masked_input and op_short(e.op) in SOFTMAX_OPS)
                  and not is_empty_reduction(e, ctx.trace)
                  and not _is_overflow(e)]
        findings = []
        for (_, module, _, phase), group in _group(events).items():
            event = group[0]
            loc = where(event)
            kind = "NaN" if event.kind == "nan" else "Inf"
            evidence = [f"{event.op} in {module_label(module)}{_at(loc)}{_code(loc)} produced {kind} at step "
                        f"{event.step} ({', '.join(e.precision for e in group)}) while all its inputs were finite"]
            facts = _input_facts(event)
            if facts:
                evidence.append(facts)
            if event.producer:
                evidence.append(f"its input came from {event.producer.op}{_at(event.producer.source)}")
            findings.append(Finding(self.id, Severity.ERROR.value, 0.8,
                                    f"{op_short(event.op)} produced {kind} in {phase}{_at(loc)}", evidence,
                                    unstable_fix(event), module=module, source=loc,
                                    precisions=[e.precision for e in group], explains_origin=True))
        return findings


def _is_overflow(event: NonfiniteEvent) -> bool:
    """add/sub/sum/mul giving Inf from finite inputs is an overflow, not a domain edge."""
    from ..facts import MATMUL_OPS
    overflow_ops = {"add", "sub", "sum", "mul", "pow", "square", "mse_loss", "cumsum", "prod"} | MATMUL_OPS
    return op_short(event.op) in overflow_ops and event.kind == "inf" and not event.masked_input


class GradSingularity(Rule):
    """What it detects: the forward pass is finite but a derivative is infinite or undefined:
    sqrt/log/pow/acos/norm at a singular point (sqrt'(0) = inf, |x|' at 0 through norm), or the
    unselected branch of `torch.where` whose gradient is 0 * inf = NaN.

    Why it produces NaN or Inf: autograd multiplies the upstream gradient by the local
    derivative. At a singular point that derivative is inf; times 0 (a masked or unselected
    element) it is NaN. The loss looks healthy; the weights become NaN after the step.

    Evidence used: the replay's first backward op that produced a non-finite value from finite
    inputs, and the forward call (module, line) that created its autograd node.

    How to fix: keep the argument away from the singular point (`torch.sqrt(x + 1e-12)`,
    `x.clamp_min(1e-12)`), or for `torch.where` mask the input too (the "double where":
    `safe = torch.where(mask, x, 1.0); torch.where(mask, torch.sqrt(safe), 0.0)`).

    Example: `torch.norm(a - b, dim=-1)` when a == b: the distance is 0, its gradient NaN.
    """

    id = "grad-singularity"
    title = "infinite or undefined derivative in backward"
    experiments = {"step-fp64": "nonfinite"}
    confirm_only = frozenset({"step-fp64"})

    def check(self, ctx: Context) -> list[Finding]:
        events = [e for e in origin_events(ctx.trace) if e.phase == "backward"]
        findings = []
        for (_, module, _, _), group in _group(events).items():
            event = group[0]
            if _backward_overflow(event, ctx):
                continue
            loc = where(event)
            forward = (event.forward_op or "").strip("_")
            code = loc.code if loc else ""
            if "where" in code or forward == "where":
                fix = (f"the unselected branch of torch.where{_at(loc)} has an infinite derivative: compute it on a "
                       "safe input too, e.g. `safe = torch.where(mask, x, torch.ones_like(x)); "
                       "torch.where(mask, torch.sqrt(safe), 0.0)`")
            elif forward in ("norm", "vector_norm", "linalg_vector_norm", "cdist", "pairwise_distance"):
                fix = (f"the norm{_at(loc)} is 0 for some rows and its derivative is undefined there: "
                       "use `torch.sqrt((x * x).sum(-1) + 1e-12)` or `F.normalize(x, eps=1e-12)`")
            elif forward in ("sqrt", "rsqrt", "pow", "__pow__"):
                fix = f"sqrt'(0) is infinite: use `torch.sqrt(x + 1e-12)` or `x.clamp_min(1e-12).sqrt()`{_at(loc)}"
            elif forward in ("acos", "asin"):
                fix = f"acos'(±1) is infinite: clamp the input to [-1 + 1e-6, 1 - 1e-6]{_at(loc)}"
            elif forward in ("log", "div", "__truediv__", "reciprocal"):
                fix = f"the derivative of {forward} at 0 is infinite: add an epsilon to the argument{_at(loc)}"
            else:
                fix = f"keep the argument of {forward or 'the op'}{_at(loc)} away from its singular point (add an epsilon, clamp)"
            evidence = [f"backward of {forward or 'an op'} in {module_label(module)}{_at(loc)}{_code(loc)} produced "
                        f"{'NaN' if event.kind == 'nan' else 'Inf'} at step {event.step} "
                        f"({', '.join(e.precision for e in group)}) from finite gradients ({event.op})"]
            facts = _input_facts(event)
            if facts:
                evidence.append(facts)
            findings.append(Finding(self.id, Severity.ERROR.value, 0.8,
                                    f"the gradient of {forward or 'an op'} is non-finite{_at(loc)}", evidence, fix,
                                    module=module, source=loc, precisions=[e.precision for e in group],
                                    explains_origin=True))
        return findings


def _backward_overflow(event: NonfiniteEvent, ctx: Context) -> bool:
    """A matmul in backward overflowing is exploding gradients or fp16 range, not a singularity."""
    from ..facts import MATMUL_OPS
    return op_short(event.op) in MATMUL_OPS and event.kind == "inf"


class MaskedSoftmax(Rule):
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
    """

    id = "masked-softmax"
    title = "softmax over a fully masked row"
    experiments = {"step-fp64": "nonfinite"}
    confirm_only = frozenset({"step-fp64"})

    def check(self, ctx: Context) -> list[Finding]:
        events = [e for e in origin_events(ctx.trace) if e.masked_input and
                  (op_short(e.op) in SOFTMAX_OPS or (e.forward_op or "") in SOFTMAX_OPS)]
        findings = []
        for (_, module, _, _), group in _group(events).items():
            event = group[0]
            loc = where(event)
            inputs = [t for t in event.inputs if t.name != "scalar"]
            evidence = [f"{event.op} in {module_label(module)}{_at(loc)}{_code(loc)} produced NaN at step {event.step} "
                        f"({', '.join(e.precision for e in group)}) from an input holding only -inf masks"
                        + (f" ({inputs[0].inf} of its values are -inf)" if inputs else "")]
            if event.producer:
                evidence.append(f"the masked scores came from {event.producer.op}{_at(event.producer.source)}")
            fix = (f"some rows are masked entirely{_at(loc)}: fill masked positions with "
                   "`torch.finfo(scores.dtype).min` instead of `float('-inf')`, or zero those rows after softmax "
                   "(`probs = probs.masked_fill(mask.all(-1, keepdim=True), 0.0)`)")
            findings.append(Finding(self.id, Severity.ERROR.value, 0.9, f"softmax over a fully masked row{_at(loc)}",
                                    evidence, fix, module=module, source=loc, precisions=[e.precision for e in group],
                                    explains_origin=True))
        return findings


class EmptyReduction(Rule):
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
    """

    id = "empty-reduction"
    title = "reduction over zero elements"
    experiments = {"step-fp64": "nonfinite"}
    confirm_only = frozenset({"step-fp64"})

    def check(self, ctx: Context) -> list[Finding]:
        events = [e for e in origin_events(ctx.trace) if is_empty_reduction(e, ctx.trace)]
        findings = []
        for (_, module, _, _), group in _group(events).items():
            event = group[0]
            # Inside a library's loss (a Hugging Face model), the user's line is where the labels are made.
            loc = event.user_source or batch_site(ctx.trace, event.precision, ("targets", "labels")) or event.source
            run = ctx.trace.run(event.precision)
            step = next((s for s in (run.steps if run else []) if s.step == event.step), None)
            evidence = [f"{event.op}{_at(loc)}{_code(loc)} produced NaN at step {event.step} "
                        f"({', '.join(e.precision for e in group)})"]
            if step and step.labels and step.labels.ignored:
                evidence.append(f"{step.labels.ignored} of {step.labels.total} targets equal ignore_index (-100)")
            empty = [t for t in event.inputs if 0 in t.shape]
            if empty:
                evidence.append(f"its input has shape {empty[0].shape} (no elements)")
            fix = (f"guard the reduction{_at(loc)} against selecting nothing: "
                   "`loss = x[mask].mean() if mask.any() else x.sum() * 0.0`, or divide by `count.clamp_min(1)`")
            findings.append(Finding(self.id, Severity.ERROR.value, 0.9, f"mean over zero elements{_at(loc)}",
                                    evidence, fix, module=module, source=loc, precisions=[e.precision for e in group],
                                    explains_origin=True))
        return findings
