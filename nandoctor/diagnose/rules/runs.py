"""Facts about the scan itself: failures that did not reproduce, work the budget cut short."""
from __future__ import annotations

from ...trace import ErrorCategory
from ..finding import Finding, Severity
from .base import Context, Rule


class Nonreproducible(Rule):
    """What it detects: a step that produced NaN/Inf in the recorded run but stayed finite when
    replayed from the same weights, optimizer state, batch and random seed.

    Why it produces NaN or Inf: something outside the model's arithmetic: non-deterministic
    kernels (atomics on GPU), a data loader that returns different data, or hardware faults.

    Evidence used: the replay outcome of the failing step.

    How to fix: make the run deterministic (`torch.use_deterministic_algorithms(True)`, fixed
    data order) and scan again; on one machine only, suspect the hardware.

    Example: a NaN at step 812 that a replay of step 812 does not show.
    """

    id = "nonreproducible"
    title = "the failure did not reproduce"

    def check(self, ctx: Context) -> list[Finding]:
        runs = [r for r in ctx.trace.runs if r.first_nonfinite is not None and r.first_nonfinite.reproduced is False]
        return [Finding(self.id, Severity.WARNING.value, 0.6, f"{r.precision}: step {r.first_nonfinite.step} did not "
                        "reproduce on replay", [r.first_nonfinite.detail], "make data order and kernels deterministic "
                        "(`torch.use_deterministic_algorithms(True)`) and scan again", precisions=[r.precision])
                for r in runs if r.first_nonfinite is not None]


class ScanIncomplete(Rule):
    """What it detects: precision runs that the `--max-seconds` budget stopped, or that the
    device cannot run (bfloat16 on a GPU without it).

    Why it produces NaN or Inf: it does not; the scan could not look at everything asked.

    Evidence used: each run's status and note.

    How to fix: raise `--max-seconds` / `max_seconds`, lower `steps`, or drop the precision.

    Example: a 30-second CI budget that covers 32-true and 16-mixed but not bf16-mixed.
    """

    id = "scan-incomplete"
    title = "part of the scan did not run"

    def check(self, ctx: Context) -> list[Finding]:
        runs = [r for r in ctx.trace.runs if r.status in ("timeout", "unsupported")]
        if not runs:
            return []
        hung = any(r.stopped_by == ErrorCategory.STEP_INTERRUPTED.value for r in runs)   # a step that never returned
        # Severity from what was left undone, never from whether the watchdog could interrupt
        # (it can only on the main thread): any timed-out run is a warning, unsupported alone info.
        timed_out = any(r.status == "timeout" for r in runs)
        return [Finding(self.id, (Severity.WARNING if timed_out else Severity.INFO).value, 1.0,
                        f"{len(runs)} precision run(s) incomplete" + (" (a step hung)" if hung else ""),
                        [f"{r.precision}: {r.status} ({r.note})" for r in runs],
                        "raise --max-seconds or lower --steps", precisions=[r.precision for r in runs])]
