"""`nandoctor run`: its options, declared once (options.py reads them for typer and for the
fast path), and its body."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..errors import InputError
from .options import NO_EXPERIMENTS, REPORT_OPTIONS, TRACE, VERBOSE, Command, Option, Positional, parse

RUN_OPTIONS: tuple[Option, ...] = (
    Option("module", ("-m", "--module"), str, None,
              "Run a module as `python -m MODULE ARGS` would (then every argument after it is the module's)."),
    Option("out", ("--out",), Path, Path("nandoctor-bundles"), "Folder for the crash bundle."),
    Option("config", ("--config", "-c"), Path, None, "A YAML config file (thresholds, fail_on)."),
    *REPORT_OPTIONS,
    Option("max_seconds", ("--max-seconds",), float, None,
              "Stop the script after this many seconds (at a step boundary); the steps that ran are reported."),
    NO_EXPERIMENTS,
    Option("check_every", ("--check-every",), int, 1,
              "Check every N optimizer steps (a failure is then seen up to N-1 steps late)."),
    Option("stats_every", ("--stats-every",), int, 50, "Per-layer statistics every N steps (0: off)."),
    Option("snapshot_every", ("--snapshot-every",), int, 100,
              "Keep a copy of the weights and optimizer state every N steps (the first and the latest; a "
              "temporary file), from which the lr experiments re-train (0: off)."),
    Option("restart_over_mib", ("--restart-over-mib",), float, None,
              "No step-0 copy of a state over this many MiB: its lr experiments run the script again from its "
              "start, in a child process (0: always). Default: the config's experiments.restart_over_mib (64)."),
    Option("on_nonfinite", ("--on-nonfinite",), str, None,
              "What a NaN/Inf step does: stop (trace it and report), skip (no update; the run goes on) or rollback "
              "(restore a copy from before it, skip the batches since, retry within --rollback-budget). skip and "
              "rollback append to OUT/skip_list.json. Default: the config's policies.on_nonfinite (stop)."),
    Option("on_spike", ("--on-spike",), str, None,
              "What a loss or gradient-norm spike does: warn, skip or rollback. Default: the config's "
              "policies.on_spike (warn)."),
    Option("rollback_every", ("--rollback-every",), int, None,
              "With rollback: keep a copy of the training state every N steps (the last two are kept). Default: "
              "policies.rollback.every (50)."),
    Option("rollback_budget", ("--rollback-budget",), int, None,
              "With rollback: rollbacks before the run stops and is reported. Default: policies.rollback.budget (3)."),
    VERBOSE,
    TRACE,
)

SCRIPT_HELP = ("The training script and its own arguments, exactly as after `python`. Everything after SCRIPT "
               "is the script's, never nandoctor's.")

RUN_DOC = """Run an unmodified training script under nandoctor: stop at the first NaN/Inf and say why.

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

RUN = Command("run", Positional("script_and_args", str, SCRIPT_HELP, rest=True, metavar="SCRIPT [SCRIPT_ARGS]..."),
              RUN_OPTIONS, RUN_DOC, interspersed=False)


def parse_run_args(argv: list[str]) -> Optional[dict[str, Any]]:
    """run_command's keywords for the words after `run`, as typer would pass them; None when the
    line needs typer. As after `python -m MODULE`, every word after -m MODULE is the module's."""
    options = parse(RUN, argv, stop_after="module")
    if options is None or (not options["script_and_args"] and options["module"] is None):
        return None                           # no script: the usage error, in typer's words
    return options


def module_args_last(argv: list[str]) -> list[str]:
    """The words after `run` with `--` put after `-m MODULE`, for typer: as after `python -m MODULE`,
    every later word is the module's (`-m pkg.train --config c.yaml` passes --config to the module),
    where click would go on reading nandoctor's own options."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if not word.startswith("-") or word in ("--", "-"):
            return argv                       # a lone "-" is SCRIPT (as click reads it): the rest is its
        name, has_value, _ = word.partition("=")
        option = next((o for o in RUN_OPTIONS if (name if has_value and name.startswith("--") else word) in o.flags), None)
        step = 1 if option is None or option.kind is bool or (has_value and name.startswith("--")) else 2
        if option is not None and option.dest == "module" and i + step <= len(argv):
            return [*argv[:i + step], "--", *argv[i + step:]]
        i += step
    return argv


def run_command(script_and_args: Optional[list[str]] = None, **options: Any) -> Any:
    """The body of `nandoctor run` (typer's command and the fast path both call it): the report."""
    from .shell import check_format, check_writable, emit, err_console, say, say_what_ran, stderr_printer, write_file
    o = {**RUN.defaults(), **options}
    fmt, output, html = o["fmt"], o["output"], o["html"]
    check_format(fmt)
    check_writable(output, "--output")
    check_writable(html, "--html")
    words = list(script_and_args or [])
    module = o["module"]
    if module is None and not words:
        raise InputError("nandoctor run needs a training script: `nandoctor run train.py ARGS` (or "
                         "`nandoctor run -m package.train ARGS`).")
    script, args = (None, words) if module is not None else (words[0], words[1:])
    on_nonfinite, on_spike = o["on_nonfinite"], o["on_spike"]
    if on_nonfinite not in (None, "stop", "skip", "rollback"):
        raise InputError(f"unknown --on-nonfinite {on_nonfinite!r}; accepted values are stop, skip, rollback.")
    if on_spike not in (None, "warn", "skip", "rollback"):
        raise InputError(f"unknown --on-spike {on_spike!r}; accepted values are warn, skip, rollback.")
    rollback_every, rollback_budget = o["rollback_every"], o["rollback_budget"]
    if (rollback_every is not None and rollback_every < 1) or (rollback_budget is not None and rollback_budget < 0):
        raise InputError("--rollback-every must be at least 1 and --rollback-budget at least 0.")
    rollback = {key: value for key, value in (("every", rollback_every), ("budget", rollback_budget))
                if value is not None}
    from ..api import run_script
    # A machine format on stdout must stay one valid document: the script's prints go to stderr then.
    machine_on_stdout = fmt != "rich" and output is None
    report = run_script(script, args, module=module, config=o["config"], out=o["out"], fail_on=o["fail_on"],
                        max_seconds=o["max_seconds"], experiments=False if o["no_experiments"] else None,
                        stats_every=o["stats_every"], check_every=o["check_every"],
                        snapshot_every=o["snapshot_every"], script_stdout_to_stderr=machine_on_stdout,
                        on_nonfinite=on_nonfinite, on_spike=on_spike, rollback=rollback or None,
                        restart_over_mib=o["restart_over_mib"])
    if report.origin_elsewhere:
        # torchrun: the rank where the NaN was born writes the report; this one only received it.
        ranks = report.script["ranks"]
        say(f"nandoctor run: rank {ranks['rank']} of {ranks['world_size']}: stopped at step "
            f"{report.script['stopped_at_step']}; the NaN/Inf was born on rank "
            f"{', '.join(map(str, ranks['origin_ranks']))} and reached this rank through the collective or the "
            "weights. That rank's report names the op and the line.")
        return report
    if o["verbose"]:
        say_what_ran(report)
    if o["trace_file"] is not None:
        from ..report.saved import write_trace
        write_trace(o["trace_file"], "run", report.trace, report.causes, report.fail_on)
    doc = report.to_dict()
    if fmt == "rich" and output is None:
        # The script's own output owns stdout; the report comes after it, on stderr.
        if not o["quiet"]:
            from ..report.console import print_report
            print_report(doc, err_console())
        if html is not None:
            from ..report.html import render_html
            write_file(html, render_html(doc))
    else:
        emit(doc, fmt, output, o["quiet"], html, printer=stderr_printer)
    return report
