"""The `nandoctor` command line.

entry.py      the executable: `nandoctor run ...` read without typer (the common line), else typer
commands.py   typer's app: every command, its --help and usage errors
run_command.py  `nandoctor run`'s options (one table for both paths) and its body
shell.py      what commands share without typer: terminal output, exit codes, report files

`app` and `main` are loaded on first use, so importing entry.py does not import typer.
"""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "main"):
        from . import commands
        return getattr(commands, name)
    raise AttributeError(f"module 'nandoctor.cli' has no attribute {name!r}")
