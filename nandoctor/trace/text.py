"""User text (exception messages, tensor names, paths) made safe for every report: no terminal
escape sequences, no control characters that XML 1.0 forbids, bounded length."""
from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def plain_text(text: str, limit: int | None = None) -> str:
    """`text` without ANSI escapes and control characters (tabs and newlines kept), cut to
    `limit` characters with a note of how much was left out."""
    text = _CONTROL.sub("", _ANSI.sub("", str(text)))
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit} more characters)"
    return text
