"""Small text helpers shared by the text reporters (formatting only, no statistics)."""
from __future__ import annotations

import math
from typing import Any, Optional

from ..trace.numbers import num as format_number


def num(value: Any, digits: int = 2) -> str:
    return format_number(value, digits, missing="–")


def origin_sentence(event: Optional[dict[str, Any]]) -> str:
    if not event:
        return "no non-finite value in any run"
    kind = "NaN" if event["kind"] == "nan" else "Inf"
    where = event.get("user_source") or event.get("source")
    parts = [f"{kind} born in {event['phase']} at step {event['step']} ({event['precision']})"]
    if event.get("op"):
        parts.append(f"op {event['op']}")
    if event.get("module"):
        parts.append(f"module `{event['module']}`")
    if event.get("parameter"):
        parts.append(f"parameter {event['parameter']}" + (f" ({event['state']})" if event.get("state") else ""))
    if event.get("tensor"):
        parts.append(f"tensor {event['tensor']} ({event.get('count')} elements)")
    if where:
        parts.append(f"at {where}")
    return ", ".join(parts)


def loss_trend(run: dict[str, Any]) -> str:
    loss = run["loss"]
    if loss["first"] is None:
        return "–"
    return f"{num(loss['first'])} → {num(loss['last'])}"


def worst_layers(doc: dict[str, Any], key: str, reverse: bool, count: int = 5) -> list[tuple[str, dict[str, Any]]]:
    """The `count` modules with the most extreme `key`, each in its worst precision (root excluded)."""
    best: dict[str, tuple[str, dict[str, Any]]] = {}
    for precision, layers in doc.get("layers", {}).items():
        for row in layers:
            value = row.get(key)
            if not row["module"] or not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
                continue
            held = best.get(row["module"])
            if held is None or (value > held[1][key]) == reverse and value != held[1][key]:
                best[row["module"]] = (precision, row)
    rows = sorted(best.values(), key=lambda pr: pr[1][key], reverse=reverse)
    return rows[:count]
