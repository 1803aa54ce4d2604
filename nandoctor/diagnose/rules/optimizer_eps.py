"""An optimizer eps that is 0 in the parameters' dtype."""
from __future__ import annotations

from ...trace.numbers import num
from ..facts import FP16_TINY
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
    """

    id = "optimizer-eps"
    title = "optimizer eps is zero in the parameters' dtype"
    experiments = {"raise-eps": "finite"}

    def check(self, ctx: Context) -> list[Finding]:
        for run in ctx.trace.runs:
            eps = run.optimizer.get("eps")
            if run.param_dtype != "float16" or not isinstance(eps, (int, float)) or eps >= FP16_TINY:
                continue
            event = run.first_nonfinite
            failed = event is not None and event.phase == "optimizer"
            evidence = [f"{run.optimizer.get('name')} eps={num(eps)} is below float16's smallest value {num(FP16_TINY)}: it is 0 in float16"]
            if failed and event is not None:
                evidence.append(f"step {event.step}: {event.op} made {event.parameter or 'a parameter'}"
                                + (f" ({event.state})" if event.state else "") + f" {'NaN' if event.kind == 'nan' else 'Inf'} in the optimizer step")
            loc = ctx.trace.functions.get("build_optimizer")
            return [Finding(self.id, (Severity.ERROR if failed else Severity.WARNING).value, 0.9 if failed else 0.6,
                            f"{run.optimizer.get('name')} eps {num(eps)} is 0 in float16", evidence,
                            f"pass `eps=1e-4` to the optimizer{' at ' + str(loc) if loc else ' (config optimizer.eps)'}, "
                            "or train 16-mixed so the optimizer keeps float32 master weights",
                            module=event.module if failed and event else None, source=loc, precisions=[run.precision],
                            explains_origin=failed)]
        return []
