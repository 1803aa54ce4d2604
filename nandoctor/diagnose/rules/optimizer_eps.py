"""An optimizer eps that is 0 in the parameters' dtype."""
from __future__ import annotations

from typing import Optional

from ...trace.numbers import num
from ...trace import NonfiniteEvent, SourceLocation
from ..evidence import at
from ..facts import FP16_TINY, command_line_flag, optimizer_site
from ..ownership import owned_events
from ..finding import Finding, Severity
from .base import Context, Rule


class OptimizerEps(Rule):
    """What it detects: an optimizer eps that is 0, or that rounds to 0 in the parameters' dtype
    (Adam's default 1e-8 is 0 in float16), so `exp_avg / (sqrt(exp_avg_sq) + eps)` divides by
    zero. A Hugging Face run's eps is `--adam_epsilon` (`TrainingArguments(adam_epsilon=...)`).

    Why it produces NaN or Inf: any parameter whose gradient is 0 (an unused embedding row, a
    dead ReLU) has exp_avg_sq = 0; with eps = 0 the update is 0/0 = NaN and the weight is NaN.

    Evidence used: the replay's first non-finite value born in the optimizer step, the
    optimizer's eps, and the parameters' dtype; a re-run with eps raised to 1e-4.

    How to fix: use `eps=1e-8` for float32 weights and `eps=1e-4` (or larger) for pure float16
    weights, or train 16-mixed so the optimizer works on float32 master weights. The fix names
    where eps is set: `--adam_epsilon` for a Hugging Face Trainer, else the optimizer's line.

    Example: `model.half()` with `torch.optim.Adam(model.parameters())`.

    Thresholds: float16's smallest subnormal 6e-8 (IEEE): an eps below half of it is 0. Confidence
    0.85 for a failure, 0.6 for the warning (eps 0 in any dtype, or below float16's range with
    float16 weights) on a run that did not fail in its optimizer step. A fused optimizer
    (`fused=True`, the Hugging Face Trainer's default AdamW) adds eps in float32, so float16
    weights alone do not make its eps 0.
    """

    id = "optimizer-eps"
    title = "optimizer eps is zero in the parameters' dtype"
    experiments = {"raise-eps": "finite"}

    def check(self, ctx: Context) -> list[Finding]:
        for event in owned_events(ctx.trace, self.id):
            return [self._failure(ctx, event)]
        for run in ctx.trace.runs:
            eps = run.optimizer.get("eps")
            # A fused optimizer adds eps in float32 (torch's fused Adam/AdamW upcast float16 weights
            # and moments inside the kernel): 1e-8 is not 0 there, only in a foreach or for-loop update.
            rounds_to_zero = (run.param_dtype == "float16" and eps < FP16_TINY and not run.optimizer.get("fused")) \
                if isinstance(eps, (int, float)) else False
            if not isinstance(eps, (int, float)) or not (eps == 0 or rounds_to_zero):
                continue
            name = run.optimizer.get("name") or "the optimizer"
            zero = "is 0" if eps == 0 else "is 0 in float16"
            reason = ("" if eps == 0 else f" is below float16's smallest value {num(FP16_TINY)}: it")
            fix = (f"{_set_eps(ctx, '1e-8' if eps == 0 else '1e-4')}"
                   + ("" if eps == 0 else ", or train 16-mixed so the optimizer keeps float32 master weights"))
            return [Finding(self.id, Severity.WARNING.value, 0.6, f"{name} eps {num(eps)} {zero}",
                            [f"{name} eps={num(eps)}{reason} {zero}: any parameter whose gradient is 0 (an unused "
                             "embedding row, a dead unit) has a second moment of 0, and its update divides 0 by 0"],
                            fix, source=_eps_line(ctx), precisions=[run.precision])]
        return []

    def _failure(self, ctx: Context, event: NonfiniteEvent) -> Finding:
        run = ctx.trace.run(event.precision)
        optimizer = run.optimizer if run else {}
        name, eps = optimizer.get("name") or "the optimizer", optimizer.get("eps")
        dtype = run.param_dtype if run else "float32"
        user_line = event.user_source
        loc = user_line or _eps_line(ctx)
        kind = "NaN" if event.kind == "nan" else "Inf"
        evidence = [f"step {event.step}: " + (f"{event.op} made " if event.op else "the update made ")
                    + f"{event.parameter or 'a parameter'}" + (f" ({event.state})" if event.state else "")
                    + f" {kind} in the optimizer step" + (f" at {user_line}" if user_line else "")]
        zero = [t for t in event.inputs if t.value is None and t.zeros]
        if zero:
            evidence.append(f"{zero[-1].name} held {zero[-1].zeros} zeros of {zero[-1].shape or 'a scalar'}: a parameter "
                            "whose gradient (and so its moment or norm) is 0 divides 0 by 0")
        if isinstance(eps, (int, float)):
            # eps=0 itself is the fact ("eps=0 is 0" said nothing): what it leaves unguarded.
            evidence.append(f"{name} eps={num(eps)}" + ("" if eps == 0 else f" is 0 in {dtype}")
                            + ": nothing keeps the update's denominator (the square root of a second "
                            "moment, + eps) above 0")
            fix = _set_eps(ctx, "1e-8" if eps == 0 or dtype != "float16" else "1e-4", user_line)
            if eps != 0 or dtype == "float16":
                fix += " (1e-8 is enough for float32 weights; float16 weights need 1e-4)"
            title = (f"{name} eps is 0" if eps == 0 else f"{name} eps {num(eps)} is 0 in {dtype}") \
                + ": the update divides 0 by 0"
        else:
            fix = (f"add an epsilon to the division in the update{at(loc)}: `g / (g.norm() + 1e-8)`, "
                   "or skip parameters whose gradient is 0")
            title = f"the optimizer's update divides by a norm that is 0{at(loc)}"
        return Finding(self.id, Severity.ERROR.value, 0.85, title, evidence, fix, module=event.module or None,
                       source=loc, precisions=[event.precision], explains_origin=True, mechanism="indeterminate")


    def plan(self, ctx, finding):  # type: ignore[override]
        # An optimizer without an eps hyperparameter (a hand-written update) has none to raise:
        # the experiment would re-run the same failure and refute a fix it never applied.
        return [r for r in super().plan(ctx, finding)
                if isinstance((ctx.trace.run(r.precision).optimizer if ctx.trace.run(r.precision) else {}).get("eps"),
                              (int, float))]


def _eps_line(ctx: Context) -> Optional[SourceLocation]:
    return optimizer_site(ctx.trace)


def _set_eps(ctx: Context, value: str, user_line: Optional[SourceLocation] = None) -> str:
    """How the user sets eps: the Hugging Face flag, their optimizer line, or the config key."""
    run = ctx.trace.runs[0] if ctx.trace.runs else None
    eps = run.optimizer.get("eps") if run is not None else None
    flag = command_line_flag(ctx.trace, ("eps", "epsilon"), eps if isinstance(eps, (int, float)) else None)
    if flag is not None:
        return f"change the script's own argument `{flag}` to {value}"
    if ctx.trace.framework == "huggingface":
        return (f"set `--adam_epsilon {value}` (`TrainingArguments(adam_epsilon={value})`): the Trainer builds "
                "its AdamW with that eps")
    # eps is written where the optimizer is built; the failure's own line is optimizer.step().
    loc = _eps_line(ctx) or user_line
    if loc is not None:
        return f"pass `eps={value}` to the optimizer at {loc}"
    if ctx.trace.loop is not None:
        return f"pass `eps={value}` where your script constructs the optimizer"
    if ctx.trace.framework == "lightning":
        return f"pass `eps={value}` to the optimizer in your LightningModule's `configure_optimizers()`"
    if ctx.trace.framework is not None:
        return f"pass `eps={value}` where your training script constructs the optimizer"
    return f"pass `eps={value}` to the optimizer (config `optimizer.eps`)"
