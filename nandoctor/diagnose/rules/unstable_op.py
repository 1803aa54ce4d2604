"""A numerically unsafe op at its domain edge."""
from __future__ import annotations

from ...trace import NonfiniteEvent
from ...trace.numbers import num
from ..evidence import at, code, group_events, input_facts
from ..facts import SOFTMAX_OPS, UNSTABLE_OPS, is_empty_reduction, module_label, op_short, origin_events, where
from ..finding import Finding, Severity
from .base import Context, Rule


def unstable_fix(event: NonfiniteEvent) -> str:
    name = op_short(event.op)
    loc = where(event)
    producer = op_short(event.producer.op) if event.producer else ""
    tensors = [t for t in event.inputs if t.name != "scalar"]
    first = tensors[0] if tensors else None
    here = at(loc)
    if name in ("log", "log2", "log10") and producer in SOFTMAX_OPS:
        return f"replace `torch.log(torch.softmax(x, dim))`{here} with `torch.log_softmax(x, dim)` (or pass logits to `F.cross_entropy`)"
    if name in ("log", "log2", "log10") and (producer == "sigmoid" or (loc is not None and "sigmoid" in loc.code)):
        return f"replace `torch.log(torch.sigmoid(x))`{here} with `F.logsigmoid(x)`, or use `nn.BCEWithLogitsLoss` on the logits"
    if name in ("log", "log2", "log10", "log1p", "logit", "xlogy"):
        return f"keep the argument positive{here}: `torch.log(x.clamp_min(1e-6))` (the input reached {num(first.min) if first else '0'})"
    if name in ("exp", "exp2", "expm1", "sinh", "cosh"):
        return (f"exp overflows for inputs above ~88.7 in float32 (~11.1 in float16); the input reached "
                f"{num(first.max) if first else 'n/a'}{here}: subtract the max first (`torch.exp(x - x.amax(-1, keepdim=True))`), "
                "or use `torch.logsumexp` / `F.softplus` / `torch.softmax`")
    if name in ("div", "true_divide", "reciprocal", "floor_divide", "fmod", "remainder"):
        denominator = tensors[1] if name != "reciprocal" and len(tensors) > 1 else first
        zeros = denominator.zeros if denominator else 0
        return (f"the denominator{here} reached 0 ({zeros} zero elements): add an epsilon (`x / (d + 1e-6)`) "
                "or clamp it (`d.clamp_min(1e-6)`)")
    if name in ("sqrt", "rsqrt", "pow"):
        return (f"the input{here} went negative (min {num(first.min) if first else 'n/a'}): clamp it first "
                "(`torch.sqrt(x.clamp_min(0) + 1e-12)`); fractional powers of negatives are NaN")
    if name in ("acos", "asin", "atanh", "acosh"):
        return (f"the input{here} left [-1, 1] (min {num(first.min) if first else 'n/a'}, max {num(first.max) if first else 'n/a'}): "
                "clamp it (`x.clamp(-1 + 1e-6, 1 - 1e-6)`), e.g. after a cosine similarity")
    if name in ("std", "var", "std_mean", "var_mean"):
        return (f"the std/var{here} is over a single element (the unbiased estimate divides by n-1 = 0): "
                "use `correction=0` / `unbiased=False`, or reduce over more than one sample")
    if event.masked_input:
        return (f"the op{here} combines a -inf mask with other values (-inf * 0 or -inf + inf): apply the mask "
                "with `masked_fill` after the arithmetic, or use `torch.finfo(x.dtype).min` instead of -inf")
    return f"guard the op{here} against its domain edge (clamp the input, add an epsilon)"


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
        for (_, module, _, phase), group in group_events(events).items():
            event = group[0]
            loc = where(event)
            kind = "NaN" if event.kind == "nan" else "Inf"
            evidence = [f"{event.op} in {module_label(module)}{at(loc)}{code(loc)} produced {kind} at step "
                        f"{event.step} ({', '.join(e.precision for e in group)}) while all its inputs were finite"]
            facts = input_facts(event)
            if facts:
                evidence.append(facts)
            if event.producer:
                evidence.append(f"its input came from {event.producer.op}{at(event.producer.source)}")
            findings.append(Finding(self.id, Severity.ERROR.value, 0.8,
                                    f"{op_short(event.op)} produced {kind} in {phase}{at(loc)}", evidence,
                                    unstable_fix(event), module=module, source=loc,
                                    precisions=[e.precision for e in group], explains_origin=True))
        return findings


def _is_overflow(event: NonfiniteEvent) -> bool:
    """add/sub/sum/mul giving Inf from finite inputs is an overflow, not a domain edge."""
    from ..facts import MATMUL_OPS
    overflow_ops = {"add", "sub", "sum", "mul", "pow", "square", "mse_loss", "cumsum", "prod"} | MATMUL_OPS
    return op_short(event.op) in overflow_ops and event.kind == "inf" and not event.masked_input
