"""`nandoctor scan`: its options, declared once (options.py reads them for typer and for the
fast path), and its body."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from .options import NO_EXPERIMENTS, REPORT_OPTIONS, TRACE, VERBOSE, Command, Option, Positional, parse

SCAN_OPTIONS: tuple[Option, ...] = (
    Option("config", ("--config", "-c"), Path, None, "A YAML config file (see configs/default.yaml)."),
    Option("steps", ("--steps",), int, None, "Training steps per precision."),
    Option("precision", ("--precision", "-p"), str, None,
           "32-true|16-mixed|bf16-mixed|16-true|bf16-true (aliases fp32, fp16, bf16); repeatable.", multiple=True),
    Option("lr", ("--lr",), float, None,
           "Learning rate; overrides the config optimizer and every param group of build_optimizer()."),
    Option("seed", ("--seed",), int, None, "Random seed."),
    Option("device", ("--device",), str, None, "auto|cpu|cuda|cuda:N."),
    Option("threads", ("--threads",), str, None, "torch CPU threads: auto (the free cores) or a number."),
    *REPORT_OPTIONS,
    Option("max_seconds", ("--max-seconds",), float, None,
           "Time budget for the whole scan; unfinished work is reported."),
    NO_EXPERIMENTS,
    Option("compile_model", ("--compile",), bool, False,
           "Train the recorded runs through torch.compile (config key `compile` names a backend); the replay of "
           "the failing step stays eager."),
    Option("checkpoint", ("--checkpoint",), Path, None, "Resume from this checkpoint and scan from its step."),
    Option("trust", ("--trust",), bool, False,
           "Allow arbitrary unpickling of --checkpoint (only for files you trust)."),
    VERBOSE,
    TRACE,
)

SCAN_DOC = """Run instrumented training steps and diagnose the first NaN/Inf.

    Examples:

      nandoctor scan sample_models/nll_classifier.py

      nandoctor scan model.py -p fp32 -p fp16 --steps 50 --format json -o report.json

      nandoctor scan model.py --format github --fail-on warning     (in CI)
    """

SCAN = Command("scan", Positional("model", Path, "The model file (defines build_model() and get_batch(step))."),
               SCAN_OPTIONS, SCAN_DOC)


def parse_scan_args(argv: list[str]) -> Optional[dict[str, Any]]:
    """scan_command's keywords for the words after `scan`, as typer would pass them (None: typer)."""
    return parse(SCAN, argv)


def scan_command(model: Path, **options: Any) -> Any:
    """The body of `nandoctor scan` (typer's command and the fast path both call it): the report."""
    from .shell import check_format, check_writable, emit, progress_bar, say_what_ran
    o = {**SCAN.defaults(), **options}
    fmt, output, html, quiet = o["fmt"], o["output"], o["html"], o["quiet"]
    check_format(fmt)
    check_writable(output, "--output")
    check_writable(html, "--html")
    from ..api import scan as run_scan
    from ..load.model_file import model_file_argv
    progress_cb, stop = progress_bar(quiet)
    try:
        # The model file sees argv as `python MODEL.py` gives it, never nandoctor's own flags.
        with model_file_argv(model):
            report = run_scan(model, o["config"], steps=o["steps"], precisions=o["precision"], lr=o["lr"],
                              seed=o["seed"], device=o["device"],
                              experiments=False if o["no_experiments"] else None, max_seconds=o["max_seconds"],
                              fail_on=o["fail_on"], checkpoint=o["checkpoint"], trust=o["trust"],
                              progress=progress_cb, threads=o["threads"], compile=True if o["compile_model"] else None)
    finally:
        stop()
    if o["verbose"]:
        say_what_ran(report)
    if o["trace_file"] is not None:
        from ..report.saved import write_trace
        write_trace(o["trace_file"], "scan", report.trace, report.causes, report.fail_on)
    emit(report.to_dict(), fmt, output, quiet, html)
    return report
