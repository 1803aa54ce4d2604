"""The `nandoctor` command line: a thin shell over the Python API.

Machine output (json, sarif, junit, ...) goes to stdout or --output; people's output
(progress, the rich report when a machine format is on stdout) goes to stderr.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ._version import __version__
from .errors import ExitCode, InputError
from .report import FORMATS

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

_stderr: list[Any] = []


def err_console() -> Any:
    """rich's Console on stderr, made on first use: a command that prints nothing to the terminal
    (--quiet, a machine format into a file) never imports rich (~20 ms and ~3 MiB per process)."""
    if not _stderr:
        from rich.console import Console
        _stderr.append(Console(stderr=True, highlight=False))
    return _stderr[0]


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


MESSAGE_LIMIT = 2000   # characters of one error paragraph; user input can be arbitrarily long


def say(text: str) -> None:
    """One paragraph on stderr, printed verbatim: `[tool.nandoctor]` or a `[/` in a path is text,
    never Rich markup; terminal escapes from user input are removed."""
    from .trace.text import plain_text
    err_console().print(plain_text(text, MESSAGE_LIMIT), soft_wrap=True, markup=False, emoji=False, highlight=False)


def _fail_input(err: InputError) -> None:
    say(f"nandoctor: error: {err}")
    raise typer.Exit(code=ExitCode.BAD_INPUT)


def _fail_internal(err: BaseException) -> None:
    say(f"nandoctor: internal error: {type(err).__name__}: {err}. This is a bug in nandoctor, not in "
        "your model; please report it with the command you ran (set NANDOCTOR_DEBUG=1 to see the traceback).")
    if os.environ.get("NANDOCTOR_DEBUG"):
        traceback.print_exc()
    raise typer.Exit(code=ExitCode.INTERNAL)


def emit(doc: dict[str, Any], fmt: str, output: Optional[Path], quiet: bool, html: Optional[Path] = None,
         printer: Any = None) -> None:
    """Write the document in `fmt` to --output or stdout; the rich report goes to the terminal."""
    from .report import render

    def print_report(doc: dict[str, Any], console: Any) -> None:   # rich, imported only to print
        if printer is not None:
            printer(doc, console)
        else:
            from .report.console import print_report as rich_report
            rich_report(doc, console)

    if html is not None:
        from .report.html import render_html
        _write(html, render_html(doc))
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
        _write(output, text)
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


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror or err}.") from None


def _guarded(run: Any) -> None:
    """Run a command body; map its outcome to the documented exit codes (README, "Exit codes")."""
    try:
        report = run()
    except InputError as err:
        _fail_input(err)
    except typer.Exit:
        raise
    except Exception as err:  # noqa: BLE001 - anything else is a bug in nandoctor: exit 3, no traceback
        _fail_internal(err)
    if getattr(report, "interrupted", False):
        say("nandoctor: interrupted (Ctrl-C); the report above covers what ran before it.")
        raise typer.Exit(code=130)
    raise typer.Exit(code=report.exit_code)


FormatOpt = Annotated[str, typer.Option("--format", "-f", help=f"Output format: {'|'.join(FORMATS)}.")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report to FILE instead of stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no console report.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Say on stderr what ran and how long each part took.")]
TraceOpt = Annotated[Optional[Path], typer.Option("--trace", help="Also save the trace (JSON) so `nandoctor report FILE` can re-render any format later, without the model.")]
FailOnOpt = Annotated[Optional[str], typer.Option("--fail-on", help="Exit 1 on findings at or above: error|warning|never (default error).")]


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt!r}; accepted values are {', '.join(FORMATS)}.")
    return fmt


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
        _check_format(fmt)
        check_writable(output, "--output")
        check_writable(html, "--html")
        from .api import scan as run_scan
        from .load.model_file import model_file_argv
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
            _say_what_ran(report)
        if trace_file is not None:
            from .report.saved import write_trace
            write_trace(trace_file, "scan", report.trace, report.causes, report.fail_on)
        emit(report.to_dict(), fmt, output, quiet, html)
        return report

    _guarded(run)


def _say_what_ran(report: Any) -> None:
    """--verbose: each run, the experiments and the total, with timings (stderr)."""
    trace = report.trace
    for run in trace.runs:
        say(f"nandoctor: ran {run.precision}: {run.status}, {len(run.steps)} of {run.steps_requested} steps "
            f"from step {run.start_step}, {run.seconds:.2f} s" + (f" ({run.note})" if run.note else ""))
    if trace.experiments:
        say(f"nandoctor: ran {len(trace.experiments)} confirming experiment(s) in {trace.experiments_seconds:.2f} s: "
            + ", ".join(f"{e.label or e.id} -> {e.outcome}" for e in trace.experiments))
    say(f"nandoctor: scan took {trace.seconds:.2f} s in all; {len(report.causes)} finding(s)")


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
        _check_format(fmt)
        if fail_on is not None and fail_on not in ("error", "warning", "never"):
            raise InputError(f"unknown --fail-on {fail_on!r}; accepted values are error, warning, never.")
        check_writable(output, "--output")
        check_writable(html, "--html")
        from .api import postmortem as run_postmortem
        from .report.console import print_postmortem
        report = run_postmortem(path, baseline, trust=trust, fail_on=fail_on or "error")
        if verbose:
            say(f"nandoctor: read {report.trace.format} checkpoint {report.trace.path}: {len(report.trace.tensors)} "
                f"tensors, {len(report.trace.optimizer)} optimizer tensors, {report.trace.seconds:.2f} s")
        if trace_file is not None:
            from .report.saved import write_trace
            write_trace(trace_file, "postmortem", report.trace, report.causes, report.fail_on)
        emit(report.to_dict(), fmt, output, quiet, html, printer=print_postmortem)
        return report

    _guarded(run)


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
        _check_format(fmt)
        if fail_on is not None and fail_on not in ("error", "warning", "never"):
            raise InputError(f"unknown --fail-on {fail_on!r}; accepted values are error, warning, never.")
        from types import SimpleNamespace
        from .report.saved import load_document
        doc = load_document(saved, fail_on)
        emit(doc, fmt, output, quiet, html)
        return SimpleNamespace(exit_code=doc["exit_code"])

    _guarded(run)


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
        _check_format(fmt)
        check_writable(output, "--output")
        check_writable(html, "--html")
        from .api import replay as run_replay
        report = run_replay(bundle, model, trust=trust, experiments=False if no_experiments else None,
                            fail_on=fail_on, max_seconds=max_seconds, device=device, rank=rank, config=config)
        if verbose:
            _say_what_ran(report)
        emit(report.to_dict(), fmt, output, quiet, html)
        return report

    _guarded(run)


@app.command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
def run(
    script_and_args: Annotated[Optional[list[str]], typer.Argument(
        metavar="SCRIPT [SCRIPT_ARGS]...",
        help="The training script and its own arguments, exactly as after `python`. Everything after SCRIPT "
             "is the script's, never nandoctor's.")] = None,
    module: Annotated[Optional[str], typer.Option("-m", "--module", help="Run a module as `python -m MODULE ARGS` "
                                                  "would (then every argument after it is the module's).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the crash bundle.")] = Path("nandoctor-bundles"),
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="A YAML config file (thresholds, fail_on).")] = None,
    fmt: FormatOpt = "rich",
    output: OutputOpt = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML report with plots.")] = None,
    quiet: QuietOpt = False,
    fail_on: FailOnOpt = None,
    max_seconds: Annotated[Optional[float], typer.Option("--max-seconds", help="Stop the script after this many seconds (at a step boundary); the steps that ran are reported.")] = None,
    no_experiments: Annotated[bool, typer.Option("--no-experiments", help="Skip the confirming experiments.")] = False,
    check_every: Annotated[int, typer.Option("--check-every", help="Check every N optimizer steps (a failure is then seen up to N-1 steps late).")] = 1,
    stats_every: Annotated[int, typer.Option("--stats-every", help="Per-layer statistics every N steps (0: off).")] = 50,
    snapshot_every: Annotated[int, typer.Option("--snapshot-every", help="Keep a copy of the weights and optimizer state every N steps (the first and the latest; a temporary file), from which the lr experiments re-train (0: off).")] = 100,
    restart_over_mib: Annotated[Optional[float], typer.Option("--restart-over-mib", help="No step-0 copy of a state over this many MiB: its lr experiments run the script again from its start, in a child process (0: always). Default: the config's experiments.restart_over_mib (64).")] = None,
    on_nonfinite: Annotated[Optional[str], typer.Option("--on-nonfinite", help="What a NaN/Inf step does: stop (trace it and report), skip (no update; the run goes on) or rollback (restore a copy from before it, skip the batches since, retry within --rollback-budget). skip and rollback append to OUT/skip_list.json. Default: the config's policies.on_nonfinite (stop).")] = None,
    on_spike: Annotated[Optional[str], typer.Option("--on-spike", help="What a loss or gradient-norm spike does: warn, skip or rollback. Default: the config's policies.on_spike (warn).")] = None,
    rollback_every: Annotated[Optional[int], typer.Option("--rollback-every", help="With rollback: keep a copy of the training state every N steps (the last two are kept). Default: policies.rollback.every (50).")] = None,
    rollback_budget: Annotated[Optional[int], typer.Option("--rollback-budget", help="With rollback: rollbacks before the run stops and is reported. Default: policies.rollback.budget (3).")] = None,
    verbose: VerboseOpt = False,
    trace_file: TraceOpt = None,
) -> None:
    """Run an unmodified training script under nandoctor: stop at the first NaN/Inf and say why.

    The script runs as `python SCRIPT ARGS` would (as __main__, with its own sys.argv and output,
    and its own exit code while it stays healthy). Every optimizer step is checked; on the first
    NaN/Inf the script is stopped, its loop runs the failing step once more, traced op by op, a
    crash bundle is written, and the report names the op and the line of your own file.

    Examples:

      nandoctor run train.py --lr 3e-4 --batch-size 64

      nandoctor run -m mypackage.train --config configs/base.yaml

      nandoctor run --format json -o report.json train.py     (nandoctor's options come before SCRIPT)

      torchrun --nproc-per-node 2 -m nandoctor run train.py   (names the rank where the NaN was born)

      nandoctor run --on-nonfinite rollback --rollback-every 20 train.py   (survive a bad batch)
    """
    def body() -> Any:
        _check_format(fmt)
        check_writable(output, "--output")
        check_writable(html, "--html")
        words = list(script_and_args or [])
        if module is None and not words:
            raise InputError("nandoctor run needs a training script: `nandoctor run train.py ARGS` (or "
                             "`nandoctor run -m package.train ARGS`).")
        script, args = (None, words) if module is not None else (words[0], words[1:])
        if on_nonfinite not in (None, "stop", "skip", "rollback"):
            raise InputError(f"unknown --on-nonfinite {on_nonfinite!r}; accepted values are stop, skip, rollback.")
        if on_spike not in (None, "warn", "skip", "rollback"):
            raise InputError(f"unknown --on-spike {on_spike!r}; accepted values are warn, skip, rollback.")
        if (rollback_every is not None and rollback_every < 1) or (rollback_budget is not None and rollback_budget < 0):
            raise InputError("--rollback-every must be at least 1 and --rollback-budget at least 0.")
        rollback = {key: value for key, value in (("every", rollback_every), ("budget", rollback_budget))
                    if value is not None}
        from .api import run_script
        # A machine format on stdout must stay one valid document: the script's prints go to stderr then.
        machine_on_stdout = fmt != "rich" and output is None
        report = run_script(script, args, module=module, config=config, out=out, fail_on=fail_on,
                            max_seconds=max_seconds, experiments=False if no_experiments else None,
                            stats_every=stats_every, check_every=check_every, snapshot_every=snapshot_every,
                            script_stdout_to_stderr=machine_on_stdout, on_nonfinite=on_nonfinite, on_spike=on_spike,
                            rollback=rollback or None, restart_over_mib=restart_over_mib)
        if report.origin_elsewhere:
            # torchrun: the rank where the NaN was born writes the report; this one only received it.
            ranks = report.script["ranks"]
            say(f"nandoctor run: rank {ranks['rank']} of {ranks['world_size']}: stopped at step "
                f"{report.script['stopped_at_step']}; the NaN/Inf was born on rank "
                f"{', '.join(map(str, ranks['origin_ranks']))} and reached this rank through the collective or the "
                "weights. That rank's report names the op and the line.")
            return report
        if verbose:
            _say_what_ran(report)
        if trace_file is not None:
            from .report.saved import write_trace
            write_trace(trace_file, "run", report.trace, report.causes, report.fail_on)
        doc = report.to_dict()
        if fmt == "rich" and output is None:
            # The script's own output owns stdout; the report comes after it, on stderr.
            if not quiet:
                from .report.console import print_report
                print_report(doc, err_console())
            if html is not None:
                from .report.html import render_html
                _write(html, render_html(doc))
        else:
            emit(doc, fmt, output, quiet, html, printer=_stderr_printer)
        return report

    _guarded(body)


def _stderr_printer(doc: dict[str, Any], console: Any) -> None:
    from .report.console import print_report
    print_report(doc, err_console() if getattr(console, "file", None) is sys.stdout else console)


@app.command()
def explain(cause: Annotated[Optional[str], typer.Argument(help="A cause id, e.g. high-lr. Without one, lists them.")] = None) -> None:
    """Print a cause's documentation: what it detects, why it breaks training, how to fix it.

    Examples:

      nandoctor explain unstable-op

      nandoctor explain            (lists every cause id)
    """
    from .diagnose import RULES, explain as explain_cause
    if cause is None:
        for rule in RULES:
            typer.echo(f"{rule.id:22s} {rule.title}")
        return
    text = explain_cause(cause)
    if text is None:
        from .diagnose import rule_ids
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
        _fail_input(InputError(f"cannot write into {directory}: {err.strerror or err}."))
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
    from .load.config import resolve_config
    try:
        if fmt not in ("rich", "json"):
            raise InputError(f"unknown --format {fmt!r} for nandoctor config; accepted values are rich, json.")
        resolved = resolve_config(config)
    except InputError as err:
        _fail_input(err)
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
