"""What a rule says: a cause with evidence, a fix, a location, and the precisions it affects."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..trace import ExperimentRequest, SourceLocation
from ..trace.vocab import Severity


@dataclass
class Finding:
    """`severity` holds a Severity value (a str enum, so it compares and serialises as text)."""
    id: str
    severity: str
    confidence: float
    title: str
    evidence: list[str] = field(default_factory=list)
    fix: str = ""
    module: Optional[str] = None
    source: Optional[SourceLocation] = None
    precisions: list[str] = field(default_factory=list)
    experiments: list[str] = field(default_factory=list)   # outcomes of confirming experiments, as sentences
    confirmed: Optional[bool] = None                        # None: not tested
    explains_origin: bool = False                           # names why the first non-finite value was born
    # Why this finding sits where it does in the ranking, in words (upstream cause, confirmed by
    # an experiment, symptom of another cause); filled by `rank`.
    rank_reason: str = ""
    mechanism: str = ""     # op-semantics class when one applies: pole, domain, overflow, indeterminate, ...
    # The cause was already acting in the steps before the failing one (a watched run's history
    # shows it): it explains the origin and everything after it, as an upstream cause does.
    upstream: bool = False
    # The root cause this finding is a consequence of (exploding activations from a too-high
    # learning rate): set by `rank`; the report nests it under that cause as one of its `symptoms`.
    symptom_of: Optional[str] = None
    # An error-level hypothesis that competes with the leading cause for the same failure and that
    # no experiment confirmed: `rank` shows it as a warning, and the experiments still test it.
    competing: bool = False


__all__ = ["Finding", "Severity", "ExperimentRequest"]
