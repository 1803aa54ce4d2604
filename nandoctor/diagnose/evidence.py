"""How findings write the places and numbers they cite (shared by the rules)."""
from __future__ import annotations

from typing import Optional

from ..trace import NonfiniteEvent, SourceLocation
from ..trace.numbers import num
from .facts import where


def at(loc: Optional[SourceLocation]) -> str:
    return f" at {loc}" if loc else ""


def code(loc: Optional[SourceLocation]) -> str:
    return f" (`{loc.code}`)" if loc and loc.code else ""


def input_facts(event: NonfiniteEvent) -> str:
    """The failing op's tensor inputs in one line: range, zeros, negatives, carried-in inf."""
    tensors = [t for t in event.inputs if t.name != "scalar" and t.value is None]
    if not tensors:
        return ""
    parts = []
    for t in tensors[:2]:
        bits = [f"min {num(t.min)}", f"max {num(t.max)}"]
        if t.zeros:
            bits.append(f"{t.zeros} zeros")
        if t.negatives:
            bits.append(f"{t.negatives} negatives")
        if t.inf:
            bits.append(f"{t.inf} inf")
        parts.append(f"{t.name} [{', '.join(bits)}]")
    return "inputs: " + "; ".join(parts)


def group_events(events: list[NonfiniteEvent]) -> dict[tuple, list[NonfiniteEvent]]:
    """The same op at the same line in several precisions is one finding."""
    groups: dict[tuple, list[NonfiniteEvent]] = {}
    for e in events:
        loc = where(e)
        groups.setdefault((e.op, e.module, str(loc) if loc else None, e.phase), []).append(e)
    return groups


def precisions_of(events: list[NonfiniteEvent]) -> str:
    return ", ".join(e.precision for e in events)
