"""How a number is written for people, in every finding and report (one home for the format)."""
from __future__ import annotations

import math
from typing import Any

_ENCODED = {"NaN": "NaN", "Infinity": "Inf", "-Infinity": "-Inf"}


def num(value: Any, digits: int = 2, missing: str = "n/a") -> str:
    """3 significant digits in [1e-3, 1e4), else scientific (`1.2e5`); NaN/Inf spelled out.
    Accepts the JSON encodings of non-finite floats ("NaN", "Infinity")."""
    if value is None:
        return missing
    if isinstance(value, str):
        return _ENCODED.get(value, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e4:
        return f"{value:.{digits + 1}g}"
    return f"{value:.{digits}e}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")
