"""The `nandoctor` executable (and `python -m nandoctor`).

The common lines of `nandoctor run` (a guarded training run) and `nandoctor scan` (a CI gate)
are read from their declarations (options.py) without importing typer: typer builds a pydantic
adapter per option (~0.15 s and ~8 MiB of every process's start-up). Every other command line,
and any line the declaration does not read exactly (help, errors, unusual spellings), goes to
typer's app in commands.py.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional


def _fast_path(argv: list[str]) -> Optional[Callable[[], Any]]:
    """The command body to call for this line, or None for typer."""
    if argv[:1] == ["run"]:
        from .run_command import parse_run_args, run_command
        options = parse_run_args(argv[1:])
        return None if options is None else (lambda: run_command(**options))
    if argv[:1] == ["scan"]:
        from .scan_command import parse_scan_args, scan_command
        options = parse_scan_args(argv[1:])
        return None if options is None else (lambda: scan_command(**options))
    return None


def main() -> None:
    argv = sys.argv[1:]
    body = _fast_path(argv)
    if body is not None:
        from .shell import guarded, say
        try:
            guarded(body)
        except KeyboardInterrupt:   # outside the steps' own handling (imports, writing the report)
            say("nandoctor: interrupted (Ctrl-C)")
            sys.exit(130)
    if argv[:1] == ["run"]:
        from .run_command import module_args_last
        sys.argv[2:] = module_args_last(argv[1:])
    from .commands import main as typer_main
    typer_main()
