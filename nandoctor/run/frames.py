"""Which Python frames are the user's: turns stacks and tracebacks into source locations."""
from __future__ import annotations

import functools
import linecache
import os
import sys
import sysconfig
import textwrap
import traceback
from types import FrameType, TracebackType
from typing import Optional

import torch

from ..load.source import display_path
from ..trace import SourceLocation

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_OUR_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_SITE_DIRS = tuple({os.path.abspath(p) + os.sep for p in
                    (sysconfig.get_paths().get("purelib"), sysconfig.get_paths().get("platlib")) if p})
_STDLIB_DIR = os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep


# Functions through which nandoctor calls the user's code: a stack walk stops there, because
# everything further out is nandoctor or its caller, never where an op came from.
_BOUNDARIES: set = set()


def register_boundary(fn) -> None:
    _BOUNDARIES.add(fn.__code__)


def _engine_boundary() -> None:
    # A backward pass enters the autograd engine here: Python frames inside it (a custom
    # Function's backward, a tensor hook) are code that runs in backward; the frames outside it
    # are whoever called `loss.backward()`, never where a backward op came from.
    try:
        from torch.autograd.graph import _engine_run_backward
    except ImportError:      # older torch: no single entry point to stop at
        return
    register_boundary(_engine_run_backward)


_engine_boundary()


def _by_file(fn):
    """Memoise a fact of a file name (asked once per frame per op while init sites are recorded:
    thousands of times for a model with a thousand modules). Relative names depend on the
    working directory, so it is part of the key."""
    cached = functools.lru_cache(maxsize=4096)(lambda filename, cwd: fn(filename))

    @functools.wraps(fn)
    def wrapper(filename: str) -> bool:
        return cached(filename, None if os.path.isabs(filename) else os.getcwd())
    return wrapper


@_by_file
def is_site_package(filename: str) -> bool:
    # dist-packages: Debian's and Ubuntu's system Python install third-party packages there.
    return os.path.abspath(filename).startswith(_SITE_DIRS) or any(
        f"{os.sep}{name}{os.sep}" in filename for name in ("site-packages", "dist-packages"))


@_by_file
def is_library(filename: str) -> bool:
    """Frames in torch, nandoctor, or the standard library are never 'where the user's op is'."""
    if filename.startswith("<"):
        return True
    full = os.path.abspath(filename)
    if full.startswith(_TORCH_DIR) or full.startswith(_OUR_DIR):
        return True
    return full.startswith(_STDLIB_DIR) and not is_site_package(full)


@_by_file
def is_user_file(filename: str) -> bool:
    """The user's own code: neither a library above nor an installed third-party package."""
    return not is_library(filename) and not is_site_package(filename)


def location(filename: str, line: int, function: str = "") -> SourceLocation:
    code = linecache.getline(filename, line).strip()
    return SourceLocation(file=display_path(filename), line=line, function=function, code=code,
                          library=not is_user_file(filename))


def stack_locations(start: Optional[FrameType] = None) -> tuple[Optional[SourceLocation], Optional[SourceLocation]]:
    """(innermost non-library frame, innermost user frame) of the current Python stack."""
    frame = start or sys._getframe(1)
    source = user = None
    while frame is not None and (source is None or user is None):
        if frame.f_code in _BOUNDARIES:
            break
        name = frame.f_code.co_filename
        if source is None and not is_library(name):
            source = location(name, frame.f_lineno, frame.f_code.co_name)
        if user is None and is_user_file(name):
            user = location(name, frame.f_lineno, frame.f_code.co_name)
        frame = frame.f_back
    return source, user


def user_frame(start: Optional[FrameType] = None) -> Optional[tuple[str, int, str]]:
    """(file, line, function) of the innermost user frame of the current Python stack: the
    `user` of `stack_locations`, without making a SourceLocation (asked once per torch call
    while init sites are recorded)."""
    frame = start or sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code in _BOUNDARIES:
            return None
        if is_user_file(code.co_filename):
            return code.co_filename, frame.f_lineno, code.co_name
        frame = frame.f_back
    return None


def traceback_locations(tb: Optional[TracebackType]) -> tuple[Optional[SourceLocation], Optional[SourceLocation], list[SourceLocation]]:
    """For an exception: (innermost non-library frame, innermost user frame, all user frames)."""
    entries = traceback.extract_tb(tb)
    source = user = None
    frames: list[SourceLocation] = []
    for entry in entries:
        if is_user_file(entry.filename):
            frames.append(location(entry.filename, entry.lineno or 0, entry.name))
    for entry in reversed(entries):
        if source is None and not is_library(entry.filename):
            source = location(entry.filename, entry.lineno or 0, entry.name)
        if user is None and is_user_file(entry.filename):
            user = location(entry.filename, entry.lineno or 0, entry.name)
    return source, user, frames



def construction_site(function, class_name: str) -> Optional[SourceLocation]:
    """The line inside the user's `function` (build_optimizer, build_scheduler) that calls
    `class_name(...)`: where an optimizer's or scheduler's hyperparameters were written. An op
    inside torch.optim has no user frame; this is the user's line that configured it."""
    import ast
    import inspect
    try:
        filename = inspect.getsourcefile(function)
        lines, first = inspect.getsourcelines(function)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    if not filename or not is_user_file(filename):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if called == class_name:
                line = first + node.lineno - 1
                return location(filename, line, getattr(function, "__name__", ""))
    return None
