"""Diagnose stage: trace -> ranked findings. Rules are pure; nothing here touches torch."""
from __future__ import annotations

import inspect
from typing import Optional

from ..trace import PostmortemTrace, Trace
from ..trace.thresholds import DEFAULT_THRESHOLDS
from .facts import failed_later
from .finding import ExperimentRequest, Finding, Severity
from .ranking import rank
from .registry import RULES, get_rule, rule_ids
from .rules.base import Context, Rule
from .rules.unexplained_nonfinite import unexplained_findings
from .verdict import checkpoint_failed, exit_code_for, scan_failed, verdict


def explain(cause_id: str) -> Optional[str]:
    """The cause's documentation (its rule's docstring); None for an unknown id."""
    rule = get_rule(cause_id)
    return inspect.cleandoc(type(rule).__doc__ or "") if rule is not None else None


def _context(trace: Trace, thresholds: Optional[dict[str, float]]) -> Context:
    merged = dict(DEFAULT_THRESHOLDS)
    merged.update(trace.config.get("thresholds", {}) or {})
    merged.update(thresholds or {})
    return Context(trace=trace, thresholds=merged)


def diagnose(trace: Trace, thresholds: Optional[dict[str, float]] = None) -> list[Finding]:
    """Every rule over the trace, experiment outcomes applied, ranked best-explanation first."""
    ctx = _context(trace, thresholds)
    findings: list[Finding] = []
    for rule in RULES:
        for finding in rule.check(ctx):
            _apply_experiments(rule, finding, trace)
            findings.append(finding)
    findings.extend(unexplained_findings(ctx, findings))
    return rank(findings)


def diagnose_checkpoint(trace: PostmortemTrace) -> list[Finding]:
    """Every rule's checkpoint check over a saved checkpoint, ranked."""
    findings: list[Finding] = []
    for rule in RULES:
        findings.extend(rule.check_checkpoint(trace))
    return rank(findings)


def plan_experiments(trace: Trace, findings: list[Finding], limit: int = 4) -> list[ExperimentRequest]:
    """The experiments that would confirm or refute the leading hypotheses (deduplicated)."""
    ctx = _context(trace, None)
    seen: set[tuple[str, str]] = set()
    requests: list[ExperimentRequest] = []
    # A competing hypothesis the ranking shows as a warning is still one an experiment should test.
    leading = [f for f in findings if f.severity == Severity.ERROR.value or f.competing][:limit]
    for finding in leading:
        rule = get_rule(finding.id)
        if rule is None:
            continue
        for request in rule.plan(ctx, finding):
            key = (request.id, request.precision)
            if key not in seen:
                seen.add(key)
                requests.append(request)
    return requests


def _apply_experiments(rule: Rule, finding: Finding, trace: Trace) -> None:
    outcomes = [e for e in trace.experiments if e.id in rule.experiments and e.precision in finding.precisions
                and e.outcome in ("finite", "nonfinite")]
    if not outcomes:
        return
    cut_short = {id(e): later for e in outcomes if (later := failed_later(e, outcomes)) is not None}
    confirming = [e for e in outcomes if e.outcome == rule.experiments[e.id] and id(e) not in cut_short]
    for e in outcomes:
        verdict = ("confirms" if e in confirming else "neutral" if e.id in rule.confirm_only or id(e) in cut_short
                   else "refutes")
        result = (f"all {e.steps_run} steps stay finite" if e.outcome == "finite"
                  else f"still non-finite at step {e.first_bad_step}")
        if id(e) in cut_short:
            later = cut_short[id(e)]
            result += (f", fewer steps than '{later.label}' needed to fail (step {later.first_bad_step}): "
                       "the failure may only be delayed past this horizon")
        finding.experiments.append(f"{verdict}: {e.label} ({e.precision}): {result} [{e.seconds:.1f}s]")
    outcomes = [e for e in outcomes if id(e) not in cut_short]
    if not outcomes:
        return
    if confirming:
        finding.confirmed = True
        finding.confidence = min(0.99, finding.confidence + 0.2)
        best = confirming[0]
        finding.evidence.append(f"confirmed: with {best.label}, " + (
            f"all {best.steps_run} steps stay finite" if best.outcome == "finite" else
            f"step {best.first_bad_step} is still non-finite"))
    elif all(e.id in rule.confirm_only for e in outcomes):
        finding.evidence.append("in float64 the step stays finite: the op fails at the edge of its inputs' "
                                "float32/16-bit range, not at a true mathematical singularity")
    else:
        finding.confirmed = False
        finding.confidence = round(finding.confidence * 0.4, 3)
        finding.explains_origin = False


__all__ = ["Finding", "Severity", "ExperimentRequest", "diagnose", "diagnose_checkpoint", "plan_experiments", "verdict",
           "explain", "rule_ids", "get_rule", "RULES", "rank", "exit_code_for", "scan_failed", "checkpoint_failed"]
