"""The `nandoctor` command line: a thin shell over the Python API.

Machine output (json, sarif, junit, ...) goes to stdout or --output; people's output
(progress, the rich report when a machine format is on stdout) goes to stderr.
"""
from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .._version import __version__
from ..errors import ExitCode, InputError
from ..report import FORMATS
from .options import FAIL_ON, FORMAT, OUTPUT, QUIET, TRACE, VERBOSE, Command, Option
from .run_command import RUN, run_command
from .scan_command import SCAN, scan_command
from .shell import (check_format, check_writable, emit, err_console, fail_input, guarded, say, say_what_ran,
                    write_file)

app = typer.Typer(
    name="nandoctor", add_completion=True, no_args_is_help=True, rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Find where a PyTorch training run's first NaN/Inf is born, why, and what to change.\n\n"
         "Examples:\n\n"
         "  nandoctor scan model.py\n\n"
         "  nandoctor scan model.py --precision 16-mixed --steps 50 --format json --output report.json\n\n"
         "  nandoctor postmortem checkpoints/last.pt\n\n"
         "  nandoctor replay nandoctor-bundles/step-000123 --model model.py\n\n"
         "  nandoctor explain high-lr\n\n"
         "Exit codes: 0 pass, 1 findings at or above --fail-on (or a run went non-finite), 2 unusable input, "
         "3 internal error, 130 interrupted (Ctrl-C; the partial report is still written).")

def _version(value: bool) -> None:
    if value:
        typer.echo(f"nandoctor {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """nandoctor: NaN/Inf diagnosis for PyTorch training."""


def _annotated(option: Option) -> Any:
    """The typer annotation of an option declared in options.py."""
    kind = option.kind if option.default is not None or option.kind is bool else Optional[option.kind]
    return Annotated[kind, typer.Option(*option.flags, help=option.help)]


FormatOpt = _annotated(FORMAT)
OutputOpt = _annotated(OUTPUT)
QuietOpt = _annotated(QUIET)
VerboseOpt = _annotated(VERBOSE)
TraceOpt = _annotated(TRACE)
FailOnOpt = _annotated(FAIL_ON)


def _typer_command(command: Command, body: Any) -> Any:
    """A typer command for a `Command` declared in options.py (the fast path in entry.py reads
    the same declaration): typer reads a command's options from its function's signature, and
    this function's signature is written from the declaration."""
    positional = command.positional
    kind = Optional[list[str]] if positional.rest else positional.kind
    params = [inspect.Parameter(positional.dest, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                default=None if positional.rest else inspect.Parameter.empty,
                                annotation=Annotated[kind, typer.Argument(metavar=positional.metavar,
                                                                          help=positional.help)])]
    for option in command.options:
        kind = list[option.kind] if option.multiple else option.kind
        if option.default is None and option.kind is not bool:
            kind = Optional[kind]
        params.append(inspect.Parameter(option.dest, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option.default,
                                        annotation=Annotated[kind, typer.Option(*option.flags, help=option.help)]))

    def command_function(**options: Any) -> None:
        guarded(lambda: body(**options))

    command_function.__name__ = command.name
    command_function.__doc__ = command.doc
    command_function.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command_function.__annotations__ = {p.name: p.annotation for p in params}
    return command_function


scan = _typer_command(SCAN, scan_command)
app.command()(scan)


@app.command()
def postmortem(
    path: Annotated[Path, typer.Argument(help="Checkpoint: torch.save file, Lightning .ckpt, .safetensors, a Hugging Face folder or a torch.distributed.checkpoint folder.")],
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="An earlier checkpoint: show which tensors changed most since it.")] = None,
    fmt: FormatOpt = "rich",
    output: OutputOpt = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML report (per-module table, worst tensors).")] = None,
    quiet: QuietOpt = False,
    fail_on: FailOnOpt = None,
    trust: Annotated[bool, typer.Option("--trust", help="Allow arbitrary unpickling (runs code from the file!) for checkpoints you trust.")] = False,
    verbose: VerboseOpt = False,
    trace_file: TraceOpt = None,
) -> None:
    """Examine a crashed checkpoint without trusting it: NaN/Inf weights, poisoned optimizer
    state, collapsed loss scale, exploding weights.

    Examples:

      nandoctor postmortem checkpoints/step_40000.pt

      nandoctor postmortem last.ckpt --baseline step_39000.ckpt --format json -o pm.json

      nandoctor postmortem model.safetensors --html postmortem.html
    """
    def run() -> Any:
        check_format(fmt)
        if fail_on is not None and fail_on not in ("error", "warning", "never"):
            raise InputError(f"unknown --fail-on {fail_on!r}; accepted values are error, warning, never.")
        check_writable(output, "--output")
        check_writable(html, "--html")
        from ..api import postmortem as run_postmortem
        from ..report.console import print_postmortem
        report = run_postmortem(path, baseline, trust=trust, fail_on=fail_on or "error")
        if verbose:
            say(f"nandoctor: read {report.trace.format} checkpoint {report.trace.path}: {len(report.trace.tensors)} "
                f"tensors, {len(report.trace.optimizer)} optimizer tensors, {report.trace.seconds:.2f} s")
        if trace_file is not None:
            from ..report.saved import write_trace
            write_trace(trace_file, "postmortem", report.trace, report.causes, report.fail_on)
        emit(report.to_dict(), fmt, output, quiet, html, printer=print_postmortem)
        return report

    guarded(run)


@app.command("report")
def report_command(
    saved: Annotated[Path, typer.Argument(help="A trace written by --trace, or a JSON report written by --format json.")],
    fmt: FormatOpt = "rich",
    output: OutputOpt = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write the self-contained HTML report.")] = None,
    quiet: QuietOpt = False,
    fail_on: FailOnOpt = None,
) -> None:
    """Re-render a saved scan, postmortem or replay in any format, without the model or torch.

    Examples:

      nandoctor scan model.py --trace run.trace.json -q && nandoctor report run.trace.json --html report.html

      nandoctor report run.trace.json --format junit -o nandoctor.xml
    """
    def run() -> Any:
        check_format(fmt)
        if fail_on is not None and fail_on not in ("error", "warning", "never"):
            raise InputError(f"unknown --fail-on {fail_on!r}; accepted values are error, warning, never.")
        from types import SimpleNamespace
        from ..report.saved import load_document
        doc = load_document(saved, fail_on)
        emit(doc, fmt, output, quiet, html)
        return SimpleNamespace(exit_code=doc["exit_code"])

    guarded(run)


@app.command()
def replay(
    bundle: Annotated[Path, typer.Argument(help="A crash bundle folder written by nandoctor.watch or a NanDoctorCallback.")],
    model: Annotated[Optional[Path], typer.Option("--model", help="Model file with build_model() and training_step(model, batch) or loss_fn(outputs, targets); required for plain-loop bundles.")] = None,
    trust: Annotated[bool, typer.Option("--trust", help="Allow importing the LightningModule (your code) that a Lightning bundle names.")] = False,
    fmt: FormatOpt = "rich",
    output: OutputOpt = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML report with plots.")] = None,
    quiet: QuietOpt = False,
    fail_on: FailOnOpt = None,
    device: Annotated[Optional[str], typer.Option(help="auto|cpu|cuda|cuda:N.")] = None,
    max_seconds: Annotated[Optional[float], typer.Option("--max-seconds", help="Time budget for the replay and its experiments.")] = None,
    no_experiments: Annotated[bool, typer.Option("--no-experiments", help="Skip the confirming experiments.")] = False,
    rank: Annotated[Optional[int], typer.Option("--rank", help="Distributed bundle: the rank to replay (default: the rank where the NaN/Inf was born).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="A YAML config file (thresholds, experiments); steps and precision come from the bundle.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Re-run the failing step of a crash bundle with op-level tracing and diagnose it.

    Nothing from the bundle is executed: it is read as JSON and safetensors. Plain-loop bundles
    need --model; Lightning bundles import your LightningModule only with --trust; Hugging Face
    bundles build a transformers model class from the stored config.

    Examples:

      nandoctor replay nandoctor-bundles/step-000123 --model model.py

      nandoctor replay nandoctor-bundles/step-000123 --trust --format json -o replay.json

      nandoctor replay nandoctor-bundles/step-000123 --model model.py --rank 1   (one rank of a torchrun job)
    """
    def run() -> Any:
        check_format(fmt)
        check_writable(output, "--output")
        check_writable(html, "--html")
        from ..api import replay as run_replay
        report = run_replay(bundle, model, trust=trust, experiments=False if no_experiments else None,
                            fail_on=fail_on, max_seconds=max_seconds, device=device, rank=rank, config=config)
        if verbose:
            say_what_ran(report)
        emit(report.to_dict(), fmt, output, quiet, html)
        return report

    guarded(run)


run = _typer_command(RUN, run_command)
app.command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})(run)


@app.command()
def explain(cause: Annotated[Optional[str], typer.Argument(help="A cause id, e.g. high-lr. Without one, lists them.")] = None) -> None:
    """Print a cause's documentation: what it detects, why it breaks training, how to fix it.

    Examples:

      nandoctor explain unstable-op

      nandoctor explain            (lists every cause id)
    """
    from ..diagnose import RULES, explain as explain_cause
    if cause is None:
        for rule in RULES:
            typer.echo(f"{rule.id:22s} {rule.title}")
        return
    text = explain_cause(cause)
    if text is None:
        from ..diagnose import rule_ids
        say(f"nandoctor: error: unknown cause id {cause!r}; known ids are {', '.join(rule_ids())}.")
        raise typer.Exit(code=ExitCode.BAD_INPUT)
    typer.echo(f"{cause}\n\n{text}")


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to write model.py and nandoctor.yaml.")] = Path("."),
) -> None:
    """Write a commented model.py template and nandoctor.yaml; never overwrites existing files.

    Examples:

      nandoctor init

      nandoctor init my_project && nandoctor scan my_project/model.py --config my_project/nandoctor.yaml
    """
    from importlib.resources import files
    targets = {"model.py": directory / "model.py", "nandoctor.yaml": directory / "nandoctor.yaml"}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing:
        say(f"nandoctor: error: {' and '.join(existing)} already exist(s); nandoctor init never "
            "overwrites files. Move them away or choose another directory.")
        raise typer.Exit(code=ExitCode.BAD_INPUT)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, path in targets.items():
            path.write_text((files("nandoctor") / "templates" / name).read_text(encoding="utf-8"), encoding="utf-8")
    except OSError as err:
        fail_input(InputError(f"cannot write into {directory}: {err.strerror or err}."))
    typer.echo(f"wrote {targets['model.py']} and {targets['nandoctor.yaml']}; next: nandoctor scan {targets['model.py']}")


@app.command("config")
def show_config(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="A YAML config file.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="rich|json")] = "rich",
) -> None:
    """Print the resolved configuration and where each value came from.

    Precedence: defaults < [tool.nandoctor] in the nearest pyproject.toml < the nearest nandoctor.yaml
    < --config < flags. "Nearest": the working directory or its closest parent, up to the repository root.

    Examples:

      nandoctor config

      nandoctor config --config ci.yaml --format json
    """
    import json as _json
    from ..load.config import resolve_config
    try:
        if fmt not in ("rich", "json"):
            raise InputError(f"unknown --format {fmt!r} for nandoctor config; accepted values are rich, json.")
        resolved = resolve_config(config)
    except InputError as err:
        fail_input(err)
    if fmt == "json":
        typer.echo(_json.dumps({"values": resolved.values, "sources": resolved.sources}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
    table = Table(title="nandoctor configuration", title_justify="left", show_edge=False)
    table.add_column("key")
    table.add_column("value")
    table.add_column("from")
    for key, source in sorted(resolved.sources.items()):
        value: Any = resolved.values
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, dict):
            continue
        table.add_row(Text(key), Text(str(value)), Text(source))
    Console().print(table)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:   # Ctrl-C outside a scan (while importing torch, writing a report)
        say("nandoctor: interrupted (Ctrl-C)")
        sys.exit(130)


if __name__ == "__main__":
    main()
