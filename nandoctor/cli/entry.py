"""The `nandoctor` executable (and `python -m nandoctor`).

`nandoctor run [OPTIONS] SCRIPT ARGS`, the command a guarded training run starts with, is read
from run_command.RUN_OPTIONS without importing typer: typer builds a pydantic adapter per option
(~0.15 s and ~8 MiB of a run's start-up). Every other command line, and any `run` line the table
does not read exactly (help, errors, unusual spellings), goes to typer's app in commands.py.
"""
from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["run"]:
        from .run_command import module_args_last, parse_run_args, run_command
        options = parse_run_args(argv[1:])
        if options is not None:
            from .shell import guarded, say
            try:
                guarded(lambda: run_command(**options))
            except KeyboardInterrupt:   # outside the script's own steps (imports, writing the report)
                say("nandoctor: interrupted (Ctrl-C)")
                sys.exit(130)
        sys.argv[2:] = module_args_last(argv[1:])
    from .commands import main as typer_main
    typer_main()
