"""What every command shares, without typer: the terminal, the exit codes, the outputs.

Kept free of typer (and of its pydantic import, ~0.15 s and ~8 MiB per process) so that
`nandoctor run`'s fast path (nandoctor/cli/entry.py) can start the user's script without it. Exits are
plain SystemExit with the documented codes, which typer and click's test runner pass through.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any, Optional

from ..errors import ExitCode, InputError
from ..report import FORMATS

_stderr: list[Any] = []


def err_console() -> Any:
    """rich's Console on stderr, made on first use: a command that prints nothing to the terminal
    (--quiet, a machine format into a file) never imports rich (~20 ms and ~3 MiB per process)."""
    if not _stderr:
        from rich.console import Console
        _stderr.append(Console(stderr=True, highlight=False))
    return _stderr[0]


MESSAGE_LIMIT = 2000   # characters of one error paragraph; user input can be arbitrarily long


def say(text: str) -> None:
    """One paragraph on stderr, printed verbatim: `[tool.nandoctor]` or a `[/` in a path is text,
    never Rich markup; terminal escapes from user input are removed."""
    from ..trace.text import plain_text
    err_console().print(plain_text(text, MESSAGE_LIMIT), soft_wrap=True, markup=False, emoji=False, highlight=False)


def fail_input(err: InputError) -> None:
    say(f"nandoctor: error: {err}")
    raise SystemExit(ExitCode.BAD_INPUT)


def fail_internal(err: BaseException) -> None:
    say(f"nandoctor: internal error: {type(err).__name__}: {err}. This is a bug in nandoctor, not in "
        "your model; please report it with the command you ran (set NANDOCTOR_DEBUG=1 to see the traceback).")
    if os.environ.get("NANDOCTOR_DEBUG"):
        traceback.print_exc()
    raise SystemExit(ExitCode.INTERNAL)


def emit(doc: dict[str, Any], fmt: str, output: Optional[Path], quiet: bool, html: Optional[Path] = None,
         printer: Any = None) -> None:
    """Write the document in `fmt` to --output or stdout; the rich report goes to the terminal."""
    from ..report import render

    def print_report(doc: dict[str, Any], console: Any) -> None:   # rich, imported only to print
        if printer is not None:
            printer(doc, console)
        else:
            from ..report.console import print_report as rich_report
            rich_report(doc, console)

    if html is not None:
        from ..report.html import render_html
        write_file(html, render_html(doc))
    if fmt == "rich":
        from rich.console import Console
        if output is not None:
            console = Console(file=open(output, "w", encoding="utf-8"), width=120, color_system=None)
            print_report(doc, console)
            console.file.close()
        elif not quiet:
            print_report(doc, Console(highlight=False))
        return
    text = render(doc, fmt)
    if output is not None:
        write_file(output, text)
        if not quiet:
            print_report(doc, err_console())
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def check_writable(path: Optional[Path], option: str) -> None:
    """Fail before the scan, not after it: `path` must be a file nandoctor can create or replace."""
    if path is None:
        return
    if path.is_dir():
        raise InputError(f"{option} {path} is a directory; give a file name.")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise InputError(f"cannot write {option} {path}: permission denied.")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot write {option} {path}: {parent} is not a directory.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {option} {path}: {parent} is not writable.")


def write_file(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror or err}.") from None


def guarded(run: Any) -> None:
    """Run a command body; map its outcome to the documented exit codes (README, "Exit codes")."""
    try:
        report = run()
    except InputError as err:
        fail_input(err)
    except Exception as err:  # noqa: BLE001 - anything else is a bug in nandoctor: exit 3, no traceback
        fail_internal(err)
    if getattr(report, "interrupted", False):
        say("nandoctor: interrupted (Ctrl-C); the report above covers what ran before it.")
        raise SystemExit(130)
    raise SystemExit(report.exit_code)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt!r}; accepted values are {', '.join(FORMATS)}.")
    return fmt


def say_what_ran(report: Any) -> None:
    """--verbose: each run, the experiments and the total, with timings (stderr)."""
    trace = report.trace
    for run in trace.runs:
        say(f"nandoctor: ran {run.precision}: {run.status}, {len(run.steps)} of {run.steps_requested} steps "
            f"from step {run.start_step}, {run.seconds:.2f} s" + (f" ({run.note})" if run.note else ""))
    if trace.experiments:
        say(f"nandoctor: ran {len(trace.experiments)} confirming experiment(s) in {trace.experiments_seconds:.2f} s: "
            + ", ".join(f"{e.label or e.id} -> {e.outcome}" for e in trace.experiments))
    say(f"nandoctor: scan took {trace.seconds:.2f} s in all; {len(report.causes)} finding(s)")


def stderr_printer(doc: dict[str, Any], console: Any) -> None:
    from ..report.console import print_report
    print_report(doc, err_console() if getattr(console, "file", None) is sys.stdout else console)


def progress_bar(quiet: bool) -> tuple[Any, Any]:
    """A rich progress bar on stderr, only for a terminal and without --quiet."""
    if quiet or not err_console().is_terminal:
        return None, lambda: None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed} steps"),
                        TimeElapsedColumn(), console=err_console(), transient=True)
    tasks: dict[str, Any] = {}
    progress.start()

    def update(precision: str, done: int) -> None:
        if precision not in tasks:
            tasks[precision] = progress.add_task(precision, total=None)
        progress.update(tasks[precision], completed=done)

    return update, progress.stop
