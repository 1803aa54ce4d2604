"""Diagnose stage: trace -> ranked findings. Rules are pure; nothing here touches torch."""
from __future__ import annotations

import inspect
from typing import Optional

from ..trace.thresholds import DEFAULT_THRESHOLDS
from ..trace import Trace
from .finding import ExperimentRequest, Finding, Severity
from .verdict import checkpoint_failed, exit_code_for, scan_failed, verdict
from .rules.base import Context, Rule
from .rules.data import DataNonfinite, DataScale, LabelRange, UserCodeError
from .rules.numerics import EmptyReduction, GradSingularity, MaskedSoftmax, UnstableOp
from .rules.optimization import BadInit, ExplodingGradients, HighLearningRate, VanishingGradients
from .rules.precision import Fp16Overflow, Fp16Underflow, LossScaleCollapse, OptimizerEps
from .rules.runs import Nonreproducible, ScanIncomplete
from .rules.state import PoisonedOptimizerState
from .rules.unexplained import UnexplainedNonfinite, unexplained_findings

RULES: list[Rule] = [
    DataNonfinite(), DataScale(), LabelRange(), HighLearningRate(), BadInit(), UnstableOp(), GradSingularity(),
    MaskedSoftmax(), EmptyReduction(), Fp16Overflow(), Fp16Underflow(), LossScaleCollapse(), ExplodingGradients(),
    VanishingGradients(), OptimizerEps(), PoisonedOptimizerState(), UserCodeError(), Nonreproducible(), ScanIncomplete(),
    UnexplainedNonfinite(),
]
_BY_ID = {rule.id: rule for rule in RULES}


def rule_ids() -> list[str]:
    return [rule.id for rule in RULES]


def get_rule(cause_id: str) -> Optional[Rule]:
    return _BY_ID.get(cause_id)


def explain(cause_id: str) -> Optional[str]:
    rule = get_rule(cause_id)
    if rule is None:
        from .checkpoint_rules import POSTMORTEM_DOCS
        doc = POSTMORTEM_DOCS.get(cause_id)
        return inspect.cleandoc(doc) if doc else None
    return inspect.cleandoc(type(rule).__doc__ or "")


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


# Among causes that explain the origin, upstream causes come first: NaN data explains every
# NaN after it; bad labels or data scale explain a divergence better than the learning rate.
PRECEDENCE = {"data-nonfinite": 0, "label-range": 0, "user-error": 0, "data-scale": 1, "bad-init": 1}


def rank(findings: list[Finding]) -> list[Finding]:
    """Errors before warnings before info; within a severity, causes that explain where the
    first non-finite value was born before downstream symptoms, then by confidence."""
    return sorted(findings, key=lambda f: (Severity(f.severity).rank, not f.explains_origin,
                                           PRECEDENCE.get(f.id, 2) if f.explains_origin else 2, -f.confidence))


def plan_experiments(trace: Trace, findings: list[Finding], limit: int = 4) -> list[ExperimentRequest]:
    """The experiments that would confirm or refute the leading hypotheses (deduplicated)."""
    ctx = _context(trace, None)
    seen: set[tuple[str, str]] = set()
    requests: list[ExperimentRequest] = []
    leading = [f for f in findings if f.severity == Severity.ERROR.value][:limit]
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
    confirming = [e for e in outcomes if e.outcome == rule.experiments[e.id]]
    for e in outcomes:
        verdict = "confirms" if e in confirming else ("neutral" if e.id in rule.confirm_only else "refutes")
        result = (f"all {e.steps_run} steps stay finite" if e.outcome == "finite"
                  else f"still non-finite at step {e.first_bad_step}")
        finding.experiments.append(f"{verdict}: {e.label} ({e.precision}): {result} [{e.seconds:.1f}s]")
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


__all__ = ["Finding", "Severity", "ExperimentRequest", "diagnose", "plan_experiments", "verdict", "explain", "rule_ids",
           "RULES", "rank", "exit_code_for", "scan_failed", "checkpoint_failed"]
