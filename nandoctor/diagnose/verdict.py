"""The verdict and the exit code: one home, read from facts as well as findings.

A run whose loss, gradients or parameters went non-finite, or whose user code raised, fails
by construction: the rules explain a failure, they do not decide whether there was one.
"""
from __future__ import annotations

from typing import Iterable

from ..trace import PostmortemTrace, RunStatus, Trace
from ..trace.vocab import Severity, severity_rank
from .finding import Finding


def scan_failed(trace: Trace) -> bool:
    """Whether any run went non-finite or crashed (a recovered GradScaler skip is not a failure)."""
    return any(RunStatus(run.status).failed for run in trace.runs)


def checkpoint_failed(trace: PostmortemTrace) -> bool:
    """Whether the checkpoint holds a non-finite parameter, buffer or optimizer state value."""
    return any(t.nan or t.inf for t in trace.tensors) or any(o.nan or o.inf for o in trace.optimizer)


def verdict(findings: Iterable[Finding], failed: bool = False) -> str:
    findings = list(findings)
    if failed or any(f.severity == Severity.ERROR.value for f in findings):
        return "fail"
    if any(f.severity == Severity.WARNING.value for f in findings):
        return "warn"
    return "pass"


def exit_code_for(findings: Iterable[Finding], fail_on: str, failed: bool = False) -> int:
    """1 when a finding reaches `fail_on` (or the run failed and fail_on is not `never`), else 0."""
    if fail_on == "never":
        return 0
    if failed:
        return 1
    limit = severity_rank(fail_on)
    return 1 if any(severity_rank(f.severity) <= limit for f in findings) else 0
