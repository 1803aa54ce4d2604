"""How the user's files are named in reports: relative to the working directory when inside it."""
from __future__ import annotations

import os


def display_path(filename: str) -> str:
    full = os.path.abspath(filename)
    try:
        rel = os.path.relpath(full)
    except ValueError:
        return full
    return full if rel.startswith("..") else rel
