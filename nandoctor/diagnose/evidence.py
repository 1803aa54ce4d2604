"""How findings write the places and numbers they cite (shared by the rules)."""
from __future__ import annotations

from typing import Optional

from ..trace import NonfiniteEvent, SourceLocation
from ..trace.numbers import num
from .facts import library_frame, where


def at(loc: Optional[SourceLocation]) -> str:
    """' at file:line' for the user's line; a library line is said to be one (evidence only:
    fixes and finding sources take the user's lines, `facts.where` / `facts.user_line`)."""
    if loc is None:
        return ""
    return f" in library code at {loc}" if loc.library else f" at {loc}"


def code(loc: Optional[SourceLocation]) -> str:
    return f" (`{loc.code}`)" if loc and loc.code else ""


def package(loc: Optional[SourceLocation]) -> str:
    """The installed package a library line belongs to ('transformers'), from its path."""
    if loc is None:
        return ""
    parts = loc.file.replace("\\", "/").split("/")
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return parts[parts.index(marker) + 1].removesuffix(".py")
    return ""


def inside(event: NonfiniteEvent) -> str:
    """' (inside transformers, at site-packages/...:48: `code`)' when the op ran in a library's
    code: the detail that stays in the evidence while the finding points at the user's line."""
    lib = library_frame(event)
    if lib is None:
        return ""
    name = package(lib)
    return f" (inside {name + ', ' if name else 'library code, '}at {lib}{': `' + lib.code + '`' if lib.code else ''})"


def at_origin(event: NonfiniteEvent) -> str:
    """Where an event's op ran, for the first line of the evidence: the user's line and its
    code, then the library line it ran in, if any."""
    loc = where(event)
    return f"{at(loc)}{code(loc)}{inside(event)}"


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


def library_note(event: NonfiniteEvent, call: Optional[SourceLocation] = None) -> str:
    """For a fix whose op ran only in a library's code (no line of the user's on the stack): that
    file is not the user's to edit, so the fix is to what the user's code (`call`, the line that
    hands the library its batch) gives it."""
    lib = library_frame(event)
    if lib is None or where(event) is not None:
        return ""
    name = package(lib) or "an installed package"
    made = f" at {call}" + (f" (`{call.code}`)" if call.code else "") if call is not None else ""
    return (f"; the op runs inside {name}, not in your files: change what your code{made} hands it (the batch, "
            "the model's config or inputs, a trainer argument) rather than that file")
