"""Exit codes and the one exception type that means "the user's input could not be used"."""
from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Documented process exit codes (README, "Exit codes"); CI systems depend on them."""

    PASS = 0          # no finding at or above --fail-on
    FINDINGS = 1      # at least one finding at or above --fail-on
    BAD_INPUT = 2     # usage, config, model file or checkpoint could not be used
    INTERNAL = 3      # a bug in nandoctor itself


class InputError(Exception):
    """The user's input (CLI usage, config, model file, checkpoint) cannot be used.

    The message is shown to the user as one paragraph, with no traceback, and the
    process exits with ExitCode.BAD_INPUT.
    """

    exit_code = ExitCode.BAD_INPUT
