"""Where a non-finite Python value was born in the user's own code, line by line.

The op tracer sees tensors; a learning-rate schedule computes with Python floats or numpy
arrays (`np.sqrt(warmup) / np.sqrt(np.arange(total))`) that no aten op ever touches. To name
the line that made such a value, the user's call runs once more under `sys.settrace`: after
each line of a frame in the user's files, its locals are read, and the first line after which
a local holds a non-finite number it did not hold before (or the line that returns one) is
where the value was born. Used only on the replay of a failing step, never on the normal path.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Callable, Optional

import torch

from ..trace import SourceLocation
from .frames import is_user_file, location

_SEQUENCE_LIMIT = 4096       # a list/tuple of numbers longer than this is not read element by element


def holds_nonfinite(value: Any) -> bool:
    """A float, a floating tensor or numpy array, or a short list/tuple of numbers with NaN/Inf."""
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, torch.Tensor):
        return (value.is_floating_point() or value.is_complex()) and value.numel() > 0 \
            and not bool(torch.isfinite(value.detach()).all())
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
        return value.dtype.kind in "fc" and value.size > 0 and not bool(numpy.isfinite(value).all())
    if isinstance(value, (list, tuple)) and len(value) <= _SEQUENCE_LIMIT:
        return any(isinstance(v, float) and not math.isfinite(v) for v in value)
    return False


def first_nonfinite_line(fn: Callable[..., Any], *args: Any) -> tuple[Any, Optional[SourceLocation]]:
    """Call `fn(*args)`; return its result and the first line of the user's files after which a
    local variable newly held a non-finite number, or that returned one (None when none did)."""
    found: list[SourceLocation] = []
    last_line: dict[int, Optional[int]] = {}
    known_bad: dict[int, set[str]] = {}

    def local(frame: Any, event: str, arg: Any):
        if found:
            return None
        key = id(frame)
        if event in ("line", "return"):
            bad = known_bad.setdefault(key, set())
            fresh = {name for name, value in frame.f_locals.items() if name not in bad and holds_nonfinite(value)}
            previous = last_line.get(key)
            if fresh and previous is not None:
                found.append(location(frame.f_code.co_filename, previous, frame.f_code.co_name))
                return None
            bad |= fresh       # arguments that arrived non-finite were not born here
            if event == "return" and holds_nonfinite(arg):
                found.append(location(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
                return None
            last_line[key] = frame.f_lineno
        return local

    def calls(frame: Any, event: str, arg: Any):
        if event == "call" and not found and is_user_file(frame.f_code.co_filename):
            last_line[id(frame)] = None
            known_bad.pop(id(frame), None)
            return local
        return None

    previous_trace = sys.gettrace()
    sys.settrace(calls)
    try:
        result = fn(*args)
    finally:
        sys.settrace(previous_trace)
    return result, (found[0] if found else None)
