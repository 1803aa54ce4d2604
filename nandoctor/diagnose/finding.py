"""What a rule says: a cause with evidence, a fix, a location, and the precisions it affects."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional

from ..trace import SourceLocation


class Severity(str, enum.Enum):
    ERROR = "error"        # breaks training
    WARNING = "warning"    # a risk or a silent stall
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"error": 0, "warning": 1, "info": 2}[self.value]


@dataclass
class Finding:
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


@dataclass
class ExperimentRequest:
    """A change the diagnosis wants tested; the run stage executes it (plain data only)."""
    id: str
    precision: str
    step: int                     # the failing step
    for_cause: str
