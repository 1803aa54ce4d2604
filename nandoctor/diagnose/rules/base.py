"""The rule interface. A rule's class docstring is its documentation (`nandoctor explain ID`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...trace import EarlyWarning, NonfiniteEvent, PostmortemTrace, Trace
from ..evidence import group_events
from ..finding import ExperimentRequest, Finding, Severity
from ..ownership import owned_events


@dataclass
class Context:
    trace: Trace
    thresholds: dict[str, float]


class Rule:
    """Sections of every docstring: What it detects / Why it produces NaN or Inf / Evidence used /
    How to fix / Example."""

    id: ClassVar[str]
    title: ClassVar[str]
    # Experiment id -> the outcome that confirms this cause ("finite" or "nonfinite"); the
    # opposite outcome refutes it. E.g. unstable-op is confirmed when float64 still fails.
    experiments: ClassVar[dict[str, str]] = {}
    # Experiments that can only confirm: their other outcome is recorded as neutral evidence
    # (a float64 step that stays finite shows a range effect, not that the op is safe).
    confirm_only: ClassVar[frozenset[str]] = frozenset()

    def check(self, ctx: Context) -> list[Finding]:
        """Findings from a scan's trace."""
        raise NotImplementedError

    def check_checkpoint(self, trace: PostmortemTrace) -> list[Finding]:
        """Findings from a saved checkpoint (postmortem); most causes only show in a scan."""
        return []

    def plan(self, ctx: Context, finding: Finding) -> list[ExperimentRequest]:
        """Experiments to run for this finding: by default each listed id on each failing precision."""
        requests = []
        for run in ctx.trace.runs:
            if run.precision in finding.precisions and run.first_nonfinite is not None:
                for exp in self.experiments:
                    requests.append(ExperimentRequest(exp, run.precision, run.first_nonfinite.step, self.id,
                                                      lr=run.optimizer.get("lr")))
        return requests


class OriginRule(Rule):
    """A cause that explains a run's first non-finite event. `diagnose/ownership.py` gives each
    event to exactly one cause; the rule explains the events it owns, one finding per op and
    line (the same failure in several precisions is one finding)."""

    experiments: ClassVar[dict[str, str]] = {"step-fp64": "nonfinite"}
    confirm_only: ClassVar[frozenset[str]] = frozenset({"step-fp64"})

    def check(self, ctx: Context) -> list[Finding]:
        return [self.explain_event(ctx, group[0], group)
                for group in group_events(owned_events(ctx.trace, self.id)).values()]

    def explain_event(self, ctx: Context, event: NonfiniteEvent, group: list[NonfiniteEvent]) -> Finding:
        raise NotImplementedError


class EarlyWarningRule(Rule):
    """A cause the watch warned of before (or without) a NaN: it reads the run's
    `early_warnings` of its own id, one finding (severity warning) per module and statistic."""

    fix_text: ClassVar[str] = ""
    mechanism_text: ClassVar[str] = ""

    def check(self, ctx: Context) -> list[Finding]:
        findings: dict[tuple[str, str], Finding] = {}
        for run in ctx.trace.runs:
            for warning in run.early_warnings:
                if warning.cause != self.id:
                    continue
                key = (warning.module, warning.statistic)
                if key in findings:
                    findings[key].precisions = sorted(set(findings[key].precisions) | {run.precision})
                    continue
                same = [w for w in run.early_warnings if w.cause == self.id and (w.module, w.statistic) == key]
                findings[key] = Finding(id=self.id, severity=self.severity(run, same).value, confidence=self.confidence(warning),
                                        title=self.title, evidence=self.evidence(run, warning),
                                        fix=self.fix_text, module=warning.module or None, precisions=[run.precision],
                                        mechanism=self.mechanism_text, upstream=self.before_failure(run, warning))
        return list(findings.values())

    def confidence(self, warning: "EarlyWarning") -> float:
        return 0.6

    def severity(self, run: Any, warnings: list["EarlyWarning"]) -> Severity:
        return Severity.WARNING

    def before_failure(self, run: Any, warning: "EarlyWarning") -> bool:
        event = run.first_nonfinite
        return event is not None and warning.step < event.step

    def evidence(self, run: Any, warning: "EarlyWarning") -> list[str]:
        where = f" in `{warning.module}`" if warning.module else ""
        lines = [f"step {warning.step}: {warning.statistic}{where} = {_fmt(warning.value)}"]
        if warning.ratio is not None and warning.since_step is not None and warning.since_step < warning.step:
            lines.append(f"trend: {warning.ratio:.3g}x its value at step {warning.since_step}"
                         + (f" (log10 slope {warning.slope:+.2f} per 100 steps)" if warning.slope is not None else ""))
        elif warning.baseline is not None and warning.ratio is not None:
            lines.append(f"window median {_fmt(warning.baseline)} ({warning.ratio:.3g}x)"
                         + (f", {warning.sigma:.1f} robust sigmas" if warning.sigma is not None else ""))
        event = run.first_nonfinite
        if event is not None and warning.step < event.step:
            lines.append(f"warned {event.step - warning.step} steps before the first NaN/Inf (step {event.step})")
        for move in warning.moved[:3]:
            lines.append(f"moved: {move.statistic} of `{move.module or 'the model'}` {_fmt(move.value)} vs window median "
                         f"{_fmt(move.median)} ({move.ratio:.3g}x), above 2x since step {move.first_step}")
        if warning.recovered_after is not None:
            lines.append(f"back under the window's level {warning.recovered_after} step(s) later")
        if warning.action != "warn":
            lines.append(f"the watch's policy: {warning.action}")
        return lines


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


# Finite steps a run trained past its last spike, with no further spike, before a spike that
# never fell back counts as absorbed: a level the run settled at (a GAN's discriminator norm rising
# as it wins), not a blow-up in the making. Longer than the spike window (64) and RECOVERY_STEPS (20).
ABSORBED_AFTER_STEPS = 100


class SpikeRule(EarlyWarningRule):
    """Loss and gradient-norm spikes. Noisy losses (small batches, heavy-tailed targets) have
    spikes the run shrugs off within a few steps; those are reported as info so that a healthy
    run passes, and so are spikes the run trained ABSORBED_AFTER_STEPS finite steps past with no
    further spike. A spike warns when the run later went non-finite, a policy acted on it, it was
    itself non-finite, or the statistic did not come back within RECOVERY_STEPS and the run did not
    go on long after it."""

    def severity(self, run: Any, warnings: list["EarlyWarning"]) -> Severity:
        if run.first_nonfinite is not None or any(w.action != "warn" or not w.finite for w in warnings):
            return Severity.WARNING
        if all(w.recovered_after is not None for w in warnings):
            return Severity.INFO
        last_step = run.start_step + run.steps_run - 1 if run.steps_run else None
        if last_step is not None and last_step - max(w.step for w in warnings) >= ABSORBED_AFTER_STEPS:
            return Severity.INFO
        return Severity.WARNING

    def evidence(self, run: Any, warning: "EarlyWarning") -> list[str]:
        lines = super().evidence(run, warning)
        same = [w for w in run.early_warnings if w.cause == self.id and w.statistic == warning.statistic]
        if len(same) > 1:
            back = [w.recovered_after for w in same if w.recovered_after is not None]
            lines.append(f"{len(same)} spikes of {warning.statistic} in this run (steps {same[0].step}-{same[-1].step})"
                         + (f", {len(back)} back within {max(back)} step(s)" if back else ""))
        return lines
