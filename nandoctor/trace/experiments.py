"""Confirming experiments as plain data: what the diagnosis asks for, what the run stage did."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .vocab import ExperimentId


@dataclass
class ExperimentRequest:
    """A change the diagnosis wants tested; the run stage executes it. It carries every number
    the runner needs (the learning rate it scales), so the runner never calls back into a trace."""
    id: str                       # an ExperimentId value
    precision: str
    step: int                     # the failing step
    for_cause: str
    lr: Optional[float] = None    # the run's learning rate, for lower-lr


@dataclass
class ExperimentResult:
    """One confirming experiment: the failing stretch re-run with a single change."""
    id: str                        # lower-lr, sanitise-batch, skip-batch, precision, clip-grad, reinit, raise-eps
    label: str                     # "lr 1e-03 -> 1e-04"
    precision: str
    change: dict[str, Any] = field(default_factory=dict)
    steps_run: int = 0
    steps_planned: int = 0
    outcome: str = "skipped"       # finite | nonfinite | error | skipped | timeout
    first_bad_step: Optional[int] = None
    seconds: float = 0.0
    note: str = ""
