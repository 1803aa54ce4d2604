"""A command's options declared once, for typer and for the fast path, without typer.

commands.py builds each typer command from a `Command` (its --help, completion and usage errors
stay typer's); `parse` reads the same declaration for the fast path in entry.py, so the common
lines of `nandoctor run` and `nandoctor scan` start without importing typer, whose per-option
pydantic adapters cost ~0.15 s and ~8 MiB per process (issue 20: the whole-process overhead).
`parse` reads only what it can read exactly as typer would (`--long VALUE`, `--long=VALUE`,
`-s VALUE`, exact flags, plain numbers) and returns None for anything else (help, an unknown or
combined option, `--`, a value typer might read differently), and typer parses the line: the
fast path may decline, never disagree (tests/test_cli_fast_path.py compares both on generated
command lines).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..report import FORMATS


@dataclass(frozen=True)
class Option:
    dest: str                      # the keyword the command's body receives
    flags: tuple[str, ...]         # as --help lists them
    kind: type                     # str, int, float, Path or bool (a flag)
    default: Any
    help: str
    multiple: bool = False         # repeatable: a list of the values given, None when none is


@dataclass(frozen=True)
class Positional:
    dest: str
    kind: type                     # Path, or str for `rest`
    help: str
    rest: bool = False             # everything from the first positional on (SCRIPT ARGS): a list
    metavar: Optional[str] = None


@dataclass(frozen=True)
class Command:
    name: str
    positional: Positional
    options: tuple[Option, ...]
    doc: str
    interspersed: bool = True      # options may follow the positional (click's default)

    def defaults(self) -> dict[str, Any]:
        return {option.dest: option.default for option in self.options}


# Options several commands share (the typer-only commands use them too: commands.py `_annotated`).
FORMAT = Option("fmt", ("--format", "-f"), str, "rich", f"Output format: {'|'.join(FORMATS)}.")
OUTPUT = Option("output", ("--output", "-o"), Path, None, "Write the report to FILE instead of stdout.")
HTML = Option("html", ("--html",), Path, None, "Also write a self-contained HTML report with plots.")
QUIET = Option("quiet", ("--quiet", "-q"), bool, False, "No progress bar and no console report.")
FAIL_ON = Option("fail_on", ("--fail-on",), str, None, "Exit 1 on findings at or above: error|warning|never (default error).")
REPORT_OPTIONS = (FORMAT, OUTPUT, HTML, QUIET, FAIL_ON)     # where a command's report goes, in --help's order
NO_EXPERIMENTS = Option("no_experiments", ("--no-experiments",), bool, False, "Skip the confirming experiments.")
VERBOSE = Option("verbose", ("--verbose", "-v"), bool, False, "Say on stderr what ran and how long each part took.")
TRACE = Option("trace_file", ("--trace",), Path, None,
               "Also save the trace (JSON) so `nandoctor report FILE` can re-render any format later, without the model.")


# Values read the same by int()/float() and by typer's coercion; anything else goes to typer.
_INT = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
_DECLINE = object()


def _value(option: Option, text: str) -> Any:
    """The typed value, or _DECLINE where typer should read (and judge) the text itself."""
    if text.startswith("-") and not (option.kind in (int, float) and _FLOAT.match(text)):
        return _DECLINE                    # `--format -q`: a value or a forgotten one? typer's to say
    if option.kind is int:
        return int(text) if _INT.match(text) else _DECLINE
    if option.kind is float:
        return float(text) if _FLOAT.match(text) else _DECLINE
    if option.kind is Path:
        return Path(text) if text else _DECLINE
    return text


def parse(command: Command, argv: list[str], stop_after: Optional[str] = None) -> Optional[dict[str, Any]]:
    """The body's keywords for the words after the command's name, as typer would pass them;
    None when the line needs typer. `stop_after`: an option after whose value every word is
    positional (run's -m MODULE, as after `python -m MODULE`)."""
    by_flag = {flag: option for option in command.options for flag in option.flags}
    options = command.defaults()
    positionals: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if not word.startswith("-") or word == "-":
            if command.positional.rest or not command.interspersed:
                positionals = argv[i:]
                break
            positionals.append(word)
            i += 1
            continue
        name, has_value, attached = word.partition("=")
        long_with_value = has_value and name.startswith("--")
        option = by_flag.get(name if long_with_value else word)
        if option is None:
            return None
        if option.kind is bool:
            if long_with_value:
                return None                   # --quiet=1: typer's message
            options[option.dest] = True
            i += 1
            continue
        if long_with_value:
            text = attached
        elif i + 1 < len(argv):
            text = argv[i + 1]
            i += 1
        else:
            return None                       # a missing value: typer's message
        value = _value(option, text)
        if value is _DECLINE:
            return None
        if option.multiple:
            options[option.dest] = [*(options[option.dest] or []), value]
        else:
            options[option.dest] = value
        i += 1
        if option.dest == stop_after:
            positionals = argv[i:]
            break
    if command.positional.rest:
        options[command.positional.dest] = positionals
        return options
    if len(positionals) != 1:
        return None                           # missing or extra arguments: typer's message
    value = _value(Option(command.positional.dest, (), command.positional.kind, None, ""), positionals[0])
    if value is _DECLINE:
        return None
    options[command.positional.dest] = value
    return options
