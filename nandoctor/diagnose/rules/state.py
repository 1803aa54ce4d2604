"""Causes carried in the training state itself (resumed checkpoints, long runs)."""
from __future__ import annotations

from ..facts import module_label
from ..finding import Finding, Severity
from .base import Context, Rule


class PoisonedOptimizerState(Rule):
    """What it detects: an optimizer step that turns parameters non-finite because the
    optimizer's own state already held NaN/Inf (Adam's exp_avg / exp_avg_sq, a momentum
    buffer), typically after resuming from a checkpoint (`scan --checkpoint`).

    Why it produces NaN or Inf: one NaN gradient leaves exp_avg_sq NaN forever (it is a
    running average), so every later update of that parameter is NaN, whatever the data.

    Evidence used: the replay's optimizer op whose non-finite input existed before the step,
    and which parameter and state tensor it was.

    How to fix: resume the weights but reset the optimizer state (skip
    `optimizer.load_state_dict`), or resume from an earlier checkpoint; skip steps whose
    gradient norm is not finite so one bad batch cannot poison the moments again.

    Example: `exp_avg of 2.weight` all NaN in a checkpoint saved after a NaN gradient.
    """

    id = "poisoned-optimizer-state"
    title = "optimizer state holds NaN/Inf"

    def check(self, ctx: Context) -> list[Finding]:
        runs = [r for r in ctx.trace.runs if r.first_nonfinite is not None and r.first_nonfinite.phase == "optimizer"
                and any(t.nan or t.inf for t in r.first_nonfinite.inputs)]
        if not runs:
            return []
        event = runs[0].first_nonfinite
        assert event is not None
        bad = next(t for t in event.inputs if t.nan or t.inf)
        state = event.state or "its state"
        evidence = [f"step {event.step}: {event.op} updated {event.parameter or 'a parameter'} from {state} that already "
                    f"held {bad.nan} NaN / {bad.inf} Inf of {bad.shape}",
                    "the gradients of this step were finite: the state carried the failure in"]
        return [Finding(self.id, Severity.ERROR.value, 0.9,
                        f"{state} of {event.parameter or 'a parameter'} is non-finite before the step", evidence,
                        "resume the weights without the optimizer state (skip optimizer.load_state_dict) or from an "
                        "earlier checkpoint; skip steps whose gradient norm is not finite",
                        module=event.module or (event.parameter or "").rpartition(".")[0] or None,
                        source=ctx.trace.functions.get("build_optimizer"), precisions=[r.precision for r in runs],
                        explains_origin=True)]
