"""`--format json`: the document as it is (non-finite floats as "NaN"/"Infinity" strings)."""
from __future__ import annotations

import json
from typing import Any


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"
