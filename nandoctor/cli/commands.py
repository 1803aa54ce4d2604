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
from .run_command import RUN_DOC, RUN_OPTIONS, SCRIPT_HELP, RunOption, run_command
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


FormatOpt = Annotated[str, typer.Option("--format", "-f", help=f"Output format: {'|'.join(FORMATS)}.")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report to FILE instead of stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no console report.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Say on stderr what ran and how long each part took.")]
TraceOpt = Annotated[Optional[Path], typer.Option("--trace", help="Also save the trace (JSON) so `nandoctor report FILE` can re-render any format later, without the model.")]
FailOnOpt = Annotated[Optional[str], typer.Option("--fail-on", help="Exit 1 on findings at or above: error|warning|never (default error).")]


@app.command()
def scan(
    model: Annotated[Path, typer.Argument(help="The model file (defines build_model() and get_batch(step)).")],
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="A YAML config file (see configs/default.yaml).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training steps per precision.")] = None,
    precision: Annotated[Optional[list[str]], typer.Option("--precision", "-p", help="32-true|16-mixed|bf16-mixed|16-true|bf16-true (aliases fp32, fp16, bf16); repeatable.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate; overrides the config optimizer and every param group of build_optimizer().")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto|cpu|cuda|cuda:N.")] = None,
    threads: Annotated[Optional[str], typer.Option("--threads", help="torch CPU threads: auto (the free cores) or a number.")] = None,
    fmt: FormatOpt = "rich",
    output: OutputOpt = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML report with plots.")] = None,
    quiet: QuietOpt = False,
    fail_on: FailOnOpt = None,
    max_seconds: Annotated[Optional[float], typer.Option("--max-seconds", help="Time budget for the whole scan; unfinished work is reported.")] = None,
    no_experiments: Annotated[bool, typer.Option("--no-experiments", help="Skip the confirming experiments.")] = False,
    compile_model: Annotated[bool, typer.Option("--compile", help="Train the recorded runs through torch.compile (config key `compile` names a backend); the replay of the failing step stays eager.")] = False,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Resume from this checkpoint and scan from its step.")] = None,
    trust: Annotated[bool, typer.Option("--trust", help="Allow arbitrary unpickling of --checkpoint (only for files you trust).")] = False,
    verbose: VerboseOpt = False,
    trace_file: TraceOpt = None,
) -> None:
    """Run instrumented training steps and diagnose the first NaN/Inf.

    Examples:

      nandoctor scan sample_models/nll_classifier.py

      nandoctor scan model.py -p fp32 -p fp16 --steps 50 --format json -o report.json

      nandoctor scan model.py --format github --fail-on warning     (in CI)
    """
    def run() -> Any:
        check_format(fmt)
        check_writable(output, "--output")
        check_writable(html, "--html")
        from ..api import scan as run_scan
        from ..load.model_file import model_file_argv
        progress_cb, stop = _progress(quiet, steps, precision)
        try:
            # The model file sees argv as `python MODEL.py` gives it, never nandoctor's own flags.
            with model_file_argv(model):
                report = run_scan(model, config, steps=steps, precisions=precision, lr=lr, seed=seed, device=device,
                                  experiments=False if no_experiments else None, max_seconds=max_seconds,
                                  fail_on=fail_on, checkpoint=checkpoint, trust=trust, progress=progress_cb,
                                  threads=threads, compile=True if compile_model else None)
        finally:
            stop()
        if verbose:
            say_what_ran(report)
        if trace_file is not None:
            from ..report.saved import write_trace
            write_trace(trace_file, "scan", report.trace, report.causes, report.fail_on)
        emit(report.to_dict(), fmt, output, quiet, html)
        return report

    guarded(run)


def _progress(quiet: bool, steps: Optional[int], precisions: Optional[list[str]]):
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


def _typer_signature(options: tuple[RunOption, ...]) -> inspect.Signature:
    """typer reads a command's options from its signature: this one is written from the table in
    run_command.py, which the fast path (entry.py) reads too."""
    params = [inspect.Parameter("script_and_args", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                annotation=Annotated[Optional[list[str]], typer.Argument(
                                    metavar="SCRIPT [SCRIPT_ARGS]...", help=SCRIPT_HELP)])]
    for option in options:
        kind = option.kind if option.default is not None or option.kind is bool else Optional[option.kind]
        params.append(inspect.Parameter(option.dest, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option.default,
                                        annotation=Annotated[kind, typer.Option(*option.flags, help=option.help)]))
    return inspect.Signature(params)


def run(**options: Any) -> None:
    guarded(lambda: run_command(**options))


run.__doc__ = RUN_DOC
run.__signature__ = _typer_signature(RUN_OPTIONS)  # type: ignore[attr-defined]
run.__annotations__ = {p.name: p.annotation for p in run.__signature__.parameters.values()}  # type: ignore[attr-defined]
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
