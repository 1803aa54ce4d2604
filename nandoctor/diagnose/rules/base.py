"""The rule interface. A rule's class docstring is its documentation (`nandoctor explain ID`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...trace import NonfiniteEvent, PostmortemTrace, Trace
from ..evidence import group_events
from ..finding import ExperimentRequest, Finding
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
