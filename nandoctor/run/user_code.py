"""The boundary through which nandoctor calls the user's code: exceptions become findings."""
from __future__ import annotations

from typing import Any, Callable

from ..errors import InputError
from ..trace import Phase, UserError
from .frames import register_boundary, traceback_locations


class UserCodeFailed(Exception):
    """Internal signal: the user's code raised during `phase`; carries the captured UserError."""

    def __init__(self, error: UserError):
        super().__init__(error.message)
        self.error = error


def call_user(phase: Phase, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (InputError, UserCodeFailed):
        raise
    except Exception as err:  # noqa: BLE001 - any exception from user code becomes a finding
        source, user, frames = traceback_locations(err.__traceback__)
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserCodeFailed(UserError(phase=phase.value, exc_type=type(err).__name__, message=message[:500],
                                       source=source, user_source=user, frames=frames[-8:])) from None


register_boundary(call_user)


