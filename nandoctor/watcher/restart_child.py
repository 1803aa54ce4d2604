"""The child process of watcher/restart.py: the script run again from its start, as the watched
run ran it, under a guard that runs that run's lr experiments from step 0 and writes their results
back as JSON (after each one: a child killed at the deadline still hands back what it finished)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ..load.script import resolve_script
from ..trace import ExperimentResult
from ..trace.plain import from_plain, to_plain
from .bundle_writer import restore_rng
from .restart import RestartPlan
from .script import execute_script
from .script_guard import ScriptGuard


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    plan = from_plain(RestartPlan, spec["plan"])
    plan.fingerprint = [(name, float(value)) for name, value in plan.fingerprint]
    results = Path(spec["results"])
    # Resolved as the parent resolved it, from the working directory (finding `-m pkg.train`
    # imports `pkg`), before sys.path becomes the one the parent's script started with.
    script = resolve_script(spec["path"] if spec["module"] is None else None, spec["module"], list(spec["args"]))
    sys.path[:] = spec["sys_path"]
    rng = torch.load(spec["rng"], weights_only=False)

    def restore() -> None:
        restore_rng(rng)
        if plan.cuda_seed is not None and "cuda" not in rng:
            torch.cuda.manual_seed_all(plan.cuda_seed)     # lazy: CUDA starts when the script uses it

    guard = ScriptGuard(out=spec["out"], stats_every=0, rerun=False, snapshot_every=0, spikes=False,
                        early_warnings=False, experiments_seconds=0.0,      # set at step 0, from the deadline
                        restart=plan, on_experiment=lambda done: _write_results(results, done))
    outcome = execute_script(script, guard, restore=restore)
    _write_results(results, guard.experiments)
    if outcome.error is not None:      # the parent's note for what was not answered
        print(f"{type(outcome.error).__name__}: {outcome.error}", file=sys.stderr)
        sys.exit(1)


def _write_results(path: Path, done: list[ExperimentResult]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps([to_plain(r) for r in done]))
    partial.replace(path)
