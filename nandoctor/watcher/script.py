"""Run an unmodified training script as `python SCRIPT ARGS` (or `python -m MODULE ARGS`) would,
under `ScriptGuard`, and say how it ended.

As `coverage run` and `py-spy` do: the script runs as `__main__` with its own `sys.argv`, its
folder first on `sys.path`, and its own output; nandoctor's report comes after it.
"""
from __future__ import annotations

import os
import runpy
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..load.script import TrainingScript
from ..run.heap import frozen_heap
from .rerun import TraceLimit
from .restart import capture_start, run_restart
from .script_guard import ScriptGuard, ScriptStop


@dataclass
class ScriptOutcome:
    """How the script ended: `exit_code` when it ran to its end (or called sys.exit), `stopped`
    when the guard stopped it, `error` (the exception) when it raised, `interrupted` on Ctrl-C."""
    exit_code: Optional[int] = None
    stopped: bool = False
    error: Optional[BaseException] = None
    interrupted: bool = False
    seconds: float = 0.0


def execute_script(script: TrainingScript, guard: ScriptGuard,
                   restore: Optional[Callable[[], None]] = None) -> ScriptOutcome:
    """Execute the script under the guard; the guard is installed before its first line runs
    and removed after its last (also when it raises). What the script starts from (its random
    generators, environment, ...) is kept, so that lr experiments can run it again from its start
    (watcher/restart.py); `restore` (in that run) puts it back instead."""
    saved_argv, saved_path0 = sys.argv[:], sys.path[0] if sys.path else None
    sys.argv = [script.argv0, *script.args]
    folder = str(script.path.resolve().parent) if script.path is not None else os.getcwd()
    if sys.path:
        sys.path[0] = folder
    else:
        sys.path.insert(0, folder)
    outcome = ScriptOutcome()
    began = time.perf_counter()
    guard.install()
    start = None
    if restore is not None:
        restore()
    else:
        start = capture_start()
    try:
        # What exists before the script's first line (torch, nandoctor) is frozen out of the cyclic
        # collector while it runs: its full collections walk the script's own objects only.
        with frozen_heap():
            if script.module is not None:
                runpy.run_module(script.module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(str(script.path), run_name="__main__")
        outcome.exit_code = 0
        guard.script_end = ("script-ended", "the script ran to its end")
    except ScriptStop:
        outcome.stopped = True
    except TraceLimit as limit:
        # A traced step that never reached its end was cut at its bound (watcher/rerun.py).
        outcome.stopped = True
        guard.script_end = ("trace-limit", str(limit))
    except SystemExit as exit:
        outcome.exit_code = _exit_code(exit.code)
        guard.script_end = ("script-exited", f"the script called sys.exit({exit.code!r})")
    except KeyboardInterrupt as err:
        outcome.interrupted = True
        outcome.error = err
        guard.script_end = ("interrupted", "KeyboardInterrupt")
    except BaseException as err:  # noqa: BLE001 - the script's own exception: a finding, never our crash
        outcome.error = err
        guard.script_end = ("script-raised", f"the script raised {type(err).__name__}: {str(err)[:160]}")
        guard.phase_at_error = guard.phase_now
        guard.on_script_error(err)
    finally:
        guard.finish()
        guard.uninstall()
        sys.argv = saved_argv
        if saved_path0 is not None and sys.path:
            sys.path[0] = saved_path0
        outcome.seconds = time.perf_counter() - began
    if guard.restart_plan is not None and start is not None:
        guard.experiments.extend(run_restart(guard.restart_plan, script, start, guard.experiments_seconds))
    return outcome


def _exit_code(code: Any) -> int:
    """sys.exit's argument as the process would turn it into an exit status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)      # what the interpreter does with sys.exit("message")
    return 1
