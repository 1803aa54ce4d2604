"""The one boundary through which nandoctor calls the user's code.

Whatever the user's code raises becomes a finding, including `SystemExit` (a `sys.exit()` in
build_model must not end nandoctor with exit 0 and no report) and a `KeyboardInterrupt` that
the code raised itself. A Ctrl-C the person pressed is told apart by `interrupt_guard`'s SIGINT
handler, which sets a flag before raising: that one stops the scan (exit 130, partial report).
What the user's code prints goes to stderr (`capture_user_output`), so machine formats on stdout
stay valid. `os._exit()` cannot be caught in-process: the process ends there (README, "Safety").
"""
from __future__ import annotations

import re

import contextlib
import signal
import sys
import threading
from typing import Any, Callable, Iterator

from ..errors import InputError
from ..trace import Phase, UserError
from ..trace.text import plain_text
from .frames import register_boundary, traceback_locations

_pressed = threading.Event()   # set by the SIGINT handler: the person pressed Ctrl-C


class UserCodeFailed(Exception):
    """Internal signal: the user's code raised during `phase`; carries the captured UserError."""

    def __init__(self, error: UserError):
        super().__init__(error.message)
        self.error = error


class ScanInterrupted(BaseException):
    """The person pressed Ctrl-C: stop the current step and report what ran (exit 130)."""


def ctrl_c_pressed() -> bool:
    return _pressed.is_set()


@contextlib.contextmanager
def interrupt_guard() -> Iterator[None]:
    """While scanning: Ctrl-C raises ScanInterrupted (which user code's `except Exception` and
    `except KeyboardInterrupt` cannot swallow). Only on the main thread, where signals arrive."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def pressed(signum: int, frame: Any) -> None:
        _pressed.set()
        raise ScanInterrupted()

    _pressed.clear()
    previous = signal.signal(signal.SIGINT, pressed)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _ToStderr:
    """sys.stdout while user code runs: its prints go to stderr, its reads of attributes pass through."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def capture_user_output() -> Iterator[None]:
    """Route sys.stdout to sys.stderr for the duration of the scan (the model's prints stay visible,
    on stderr, and `--format json` on stdout stays one valid document)."""
    original = sys.stdout
    sys.stdout = _ToStderr(sys.stderr)
    try:
        yield
    finally:
        sys.stdout = original


def user_error(phase: Phase, err: BaseException) -> UserError:
    """The finding-side record of an exception raised by the user's code."""
    source, user, frames = traceback_locations(err.__traceback__)
    if isinstance(err, SystemExit):
        message = f"the code called sys.exit({err.code!r}); nandoctor kept running to report on it"
    else:
        text = str(err).strip()
        message = text.splitlines()[0] if text else type(err).__name__
    return UserError(phase=phase.value, exc_type=type(err).__name__, message=plain_text(message, 500),
                     source=source, user_source=user, frames=frames[-8:])


# torch's own message when nll_loss / cross_entropy index the logits with a class target outside
# [0, C) on the CPU (aten/src/ATen/native/LossNLL.cpp); on CUDA the same target is a device-side assert.
_TARGET_OUT_OF_BOUNDS = re.compile(r"^Target -?\d+ is out of bounds")


def target_out_of_range(err: BaseException) -> bool:
    """The exception is the loss rejecting a class target outside the model's classes."""
    return isinstance(err, IndexError) and _TARGET_OUT_OF_BOUNDS.match(str(err).strip()) is not None


def call_user(phase: Phase, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (InputError, UserCodeFailed):
        raise
    except KeyboardInterrupt as err:
        if ctrl_c_pressed():
            raise
        raise UserCodeFailed(user_error(phase, err)) from None
    except (Exception, SystemExit, GeneratorExit) as err:  # noqa: BLE001 - any exception from user code is a finding
        raise UserCodeFailed(user_error(phase, err)) from None


register_boundary(call_user)
