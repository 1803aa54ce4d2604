"""An optimizer eps that is 0 in the parameters' dtype."""
from __future__ import annotations

from ...trace.numbers import num
from ...trace import NonfiniteEvent
from ..evidence import at
from ..facts import FP16_TINY
from ..ownership import owned_events
from ..finding import Finding, Severity
from .base import Context, Rule


class OptimizerEps(Rule):
    """What it detects: an optimizer eps that rounds to 0 in the parameters' dtype (Adam's
    default 1e-8 is 0 in float16), so `exp_avg / (sqrt(exp_avg_sq) + eps)` divides by zero.

    Why it produces NaN or Inf: any parameter whose gradient is 0 (an unused embedding row, a
    dead ReLU) has exp_avg_sq = 0; with eps = 0 the update is 0/0 = NaN and the weight is NaN.

    Evidence used: the replay's first non-finite value born in the optimizer step, the
    optimizer's eps, and the parameters' dtype; a re-run with eps raised to 1e-4.

    How to fix: use `eps=1e-4` (or larger) for pure float16 weights, or train 16-mixed so the
    optimizer works on float32 master weights.

    Example: `model.half()` with `torch.optim.Adam(model.parameters())`.

    Thresholds: float16's smallest subnormal 6e-8 (IEEE): an eps below half of it is 0. Confidence
    0.85 for a failure, 0.6 for the warning.
    """

    id = "optimizer-eps"
    title = "optimizer eps is zero in the parameters' dtype"
    experiments = {"raise-eps": "finite"}

    def check(self, ctx: Context) -> list[Finding]:
        for event in owned_events(ctx.trace, self.id):
            return [self._failure(ctx, event)]
        for run in ctx.trace.runs:
            eps = run.optimizer.get("eps")
            if run.param_dtype != "float16" or not isinstance(eps, (int, float)) or eps >= FP16_TINY:
                continue
            loc = ctx.trace.functions.get("build_optimizer")
            return [Finding(self.id, Severity.WARNING.value, 0.6, f"{run.optimizer.get('name')} eps {num(eps)} is 0 in float16",
                            [f"{run.optimizer.get('name')} eps={num(eps)} is below float16's smallest value "
                             f"{num(FP16_TINY)}: it is 0 in float16"],
                            f"pass `eps=1e-4` to the optimizer{' at ' + str(loc) if loc else ' (config optimizer.eps)'}, "
                            "or train 16-mixed so the optimizer keeps float32 master weights", source=loc,
                            precisions=[run.precision])]
        return []

    def _failure(self, ctx: Context, event: NonfiniteEvent) -> Finding:
        run = ctx.trace.run(event.precision)
        optimizer = run.optimizer if run else {}
        name, eps = optimizer.get("name") or "the optimizer", optimizer.get("eps")
        dtype = run.param_dtype if run else "float32"
        user_line = event.user_source
        loc = user_line or ctx.trace.functions.get("build_optimizer")
        kind = "NaN" if event.kind == "nan" else "Inf"
        evidence = [f"step {event.step}: {event.op} made {event.parameter or 'a parameter'}"
                    + (f" ({event.state})" if event.state else "") + f" {kind} in the optimizer step"
                    + (f" at {user_line}" if user_line else "")]
        zero = [t for t in event.inputs if t.value is None and t.zeros]
        if zero:
            evidence.append(f"{zero[-1].name} held {zero[-1].zeros} zeros of {zero[-1].shape or 'a scalar'}: a parameter "
                            "whose gradient (and so its moment or norm) is 0 divides 0 by 0")
        if isinstance(eps, (int, float)):
            evidence.append(f"{name} eps={num(eps)}" + (" is 0" if eps == 0 else f" is 0 in {dtype}"))
            fix = (f"pass `eps=1e-8` (float32) or `eps=1e-4` (float16 weights) to {name}"
                   + (f" at {loc}" if loc else " (config optimizer.eps)"))
            title = f"{name} eps {num(eps)} is 0 in {dtype}: the update divides 0 by 0"
        else:
            fix = (f"add an epsilon to the division in the update{at(loc)}: `g / (g.norm() + 1e-8)`, "
                   "or skip parameters whose gradient is 0")
            title = f"the optimizer's update divides by a norm that is 0{at(loc)}"
        return Finding(self.id, Severity.ERROR.value, 0.85, title, evidence, fix, module=event.module or None,
                       source=loc, precisions=[event.precision], explains_origin=True, mechanism="indeterminate")
