"""An infinite or undefined derivative in backward."""
from __future__ import annotations

from ...trace import NonfiniteEvent
from ..evidence import at, at_origin, input_facts, precisions_of
from ..facts import module_label, op_short, user_line, where
from ..finding import Finding, Severity
from .base import Context, OriginRule


def _applied(forward: str) -> str:
    """The guarded op written on the safe input, for the double-where example."""
    if forward in ("div", "true_divide", "truediv"):
        return "y / safe"
    if forward == "reciprocal":
        return "1 / safe"
    if forward in ("log", "log2", "log10", "sqrt", "rsqrt", "acos", "asin", "atanh", "exp", "lgamma", "digamma"):
        return f"torch.{forward}(safe)"
    if forward == "pow":
        return "safe ** p"
    return f"{forward or 'op'}(safe)"


class GradSingularity(OriginRule):
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

    Thresholds: none; the replay observes the backward op. Confidence 0.8.
    """

    id = "grad-singularity"
    title = "infinite or undefined derivative in backward"

    def explain_event(self, ctx: Context, event: NonfiniteEvent, group: list[NonfiniteEvent]) -> Finding:
        module, phase = event.module, event.phase
        loc = where(event)
        forward = op_short(event.forward_op) if phase == "backward" else op_short(event.call or event.op)
        line = loc.code if loc else ""
        trap = phase != "backward" or "where" in line or forward == "where"
        guard = op_short(event.dropped_by.op) if event.dropped_by is not None else "where"
        if trap and guard != "where":
            fix = (f"{guard}{at(user_line(event.dropped_by.source) if event.dropped_by else loc)} drops the non-finite values "
                   f"of {forward or 'the op'}{at(loc)} in forward, but their gradient is still inf * 0 = NaN: "
                   "make the input safe before the op, e.g. `safe = torch.where(mask, x, torch.ones_like(x))`, "
                   f"then {forward or 'the op'}(safe)")
        elif trap:
            fix = (f"the unselected branch of torch.where{at(loc)} still computes {forward or 'the op'} on every "
                   "element, and its gradient there is inf * 0 = NaN: use the double where, e.g. "
                   f"`safe = torch.where(mask, x, torch.ones_like(x)); torch.where(mask, {_applied(forward)}, 0.0)`")
        elif forward in ("norm", "vector_norm", "linalg_vector_norm", "cdist", "pairwise_distance"):
            fix = (f"the norm{at(loc)} is 0 for some rows and its derivative is undefined there: "
                   "use `torch.sqrt((x * x).sum(-1) + 1e-12)` or `F.normalize(x, eps=1e-12)`")
        elif forward in ("sqrt", "rsqrt", "pow"):
            fix = f"sqrt'(0) is infinite: use `torch.sqrt(x + 1e-12)` or `x.clamp_min(1e-12).sqrt()`{at(loc)}"
        elif forward in ("acos", "asin"):
            fix = f"acos'(±1) is infinite: clamp the input to [-1 + 1e-6, 1 - 1e-6]{at(loc)}"
        elif forward in ("log", "div", "truediv", "reciprocal"):
            fix = f"the derivative of {forward} at 0 is infinite: add an epsilon to the argument{at(loc)}"
        else:
            fix = f"keep the argument of {forward or 'the op'}{at(loc)} away from its singular point (add an epsilon, clamp)"
        kind = "NaN" if event.kind == "nan" else "Inf"
        if trap and phase != "backward":
            evidence = [f"{event.call or event.op or 'an op'}{at_origin(event)} made {kind} in {phase} at step {event.step} "
                        f"({precisions_of(group)}) that the forward value never used: the loss stayed finite and "
                        f"the failure surfaced in the {event.surfaced_in}"]
        else:
            evidence = [f"backward of {forward or 'an op'} in {module_label(module, event.phase)}{at_origin(event)} produced "
                        f"{kind} at step {event.step} ({precisions_of(group)}) from finite gradients ({event.op})"]
        if trap and event.dropped_by is not None:
            evidence.append(f"{event.dropped_by.op}{at(event.dropped_by.source)} took those values in and gave only "
                            "finite values out")
        facts = input_facts(event)
        if facts:
            evidence.append(facts)
        title = (f"NaN gradient through the unselected torch.where branch{at(loc)}" if trap and guard == "where"
                 else f"NaN gradient through values {guard} dropped{at(loc)}" if trap
                 else f"the gradient of {forward or 'an op'} is non-finite{at(loc)}")
        return Finding(self.id, Severity.ERROR.value, 0.8, title, evidence, fix, module=module or None,
                                source=loc, precisions=[e.precision for e in group], explains_origin=True,
                                mechanism="pole")
