"""A line of source code, as the trace names it (scan, compile replay, findings)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SourceLocation:
    file: str                  # as shown to the user: relative to the working directory when inside it
    line: int
    function: str = ""
    code: str = ""             # the text of that line
    # A frame of an installed package (site-packages: transformers, lightning, ...): where an op
    # ran, kept as detail, never the line a finding tells the user to change.
    library: bool = False

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"
