"""Optimizer state holding NaN/Inf."""
from __future__ import annotations

from ...trace import PostmortemTrace
from ...trace.numbers import num
from ..finding import Finding, Severity
from ..ownership import owned_events
from .base import Context, Rule


class PoisonedOptimizerState(Rule):
    """What it detects: an optimizer step that turns parameters non-finite because the
    optimizer's own state already held NaN/Inf (Adam's exp_avg / exp_avg_sq, a momentum
    buffer), typically after resuming from a checkpoint (`scan --checkpoint`); and in a saved
    checkpoint (postmortem), state that is non-finite or impossible: NaN/Inf moments, a
    negative exp_avg_sq, or step counters that disagree between parameters.

    Why it produces NaN or Inf: one NaN gradient leaves exp_avg_sq NaN forever (it is a
    running average), so every later update of that parameter is NaN, whatever the data.

    Evidence used: the replay's optimizer op whose non-finite input existed before the step,
    and which parameter and state tensor it was; in a checkpoint, NaN/Inf/negative counts of
    every state tensor and the `step` values of all parameters.

    How to fix: resume the weights but reset the optimizer state (skip
    `optimizer.load_state_dict`), or resume from an earlier checkpoint; skip steps whose
    gradient norm is not finite so one bad batch cannot poison the moments again.

    Example: `exp_avg of 2.weight` all NaN in a checkpoint saved after a NaN gradient.

    Thresholds: none; a NaN/Inf/negative value in the state is a fact. Confidence 0.9 (scan), 0.95
    (checkpoint); 0.6 for disagreeing step counters.
    """

    id = "poisoned-optimizer-state"
    title = "optimizer state holds NaN/Inf"

    def check(self, ctx: Context) -> list[Finding]:
        runs = [r for r in ctx.trace.runs if r.first_nonfinite is not None
                and r.first_nonfinite in owned_events(ctx.trace, self.id)]
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

    def check_checkpoint(self, trace: PostmortemTrace) -> list[Finding]:
        return _checkpoint_findings(trace)


def _checkpoint_findings(trace: PostmortemTrace) -> list[Finding]:
    """The checkpoint check: non-finite or impossible state values, disagreeing step counters."""
    findings = []
    bad = [o for o in trace.optimizer if o.nan or o.inf or (o.key == "exp_avg_sq" and o.negatives)]
    if bad:
        evidence = [f"{o.key} of parameter {o.param}: {o.nan} NaN, {o.inf} Inf"
                    + (f", {o.negatives} negative" if o.negatives and o.key == "exp_avg_sq" else "") for o in bad[:6]]
        weights_ok = not any(t.nan or t.inf for t in trace.tensors)
        if weights_ok:
            evidence.append("the weights themselves are still finite: the next update will poison them")
        findings.append(Finding("poisoned-optimizer-state", Severity.ERROR.value, 0.95,
                                f"optimizer state is poisoned in {len({o.param for o in bad})} parameter(s)", evidence,
                                "resume the weights but not the optimizer state (skip optimizer.load_state_dict), or "
                                "resume from an earlier checkpoint; skip steps whose gradient norm is not finite",
                                explains_origin=weights_ok))
    steps = sorted(set(trace.state_steps))
    if len(steps) > 1:
        findings.append(Finding("poisoned-optimizer-state", Severity.WARNING.value, 0.6,
                                f"optimizer step counters disagree ({num(steps[0])} to {num(steps[-1])})",
                                [f"per-parameter step values: {', '.join(num(s) for s in steps[:8])}"],
                                "parameters were added, frozen or skipped mid-run; check that the optimizer state "
                                "matches the model before resuming"))
    return findings
