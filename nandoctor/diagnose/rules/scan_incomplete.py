"""Part of the scan that did not run."""
from __future__ import annotations

from ...trace import ErrorCategory
from ..finding import Finding, Severity
from .base import Context, Rule


class ScanIncomplete(Rule):
    """What it detects: precision runs that the `--max-seconds` budget stopped, or that the
    device cannot run (bfloat16 on a GPU without it).

    Why it produces NaN or Inf: it does not; the scan could not look at everything asked.

    Evidence used: each run's status and note.

    How to fix: raise `--max-seconds` / `max_seconds`, lower `steps`, or drop the precision.

    Example: a 30-second CI budget that covers 32-true and 16-mixed but not bf16-mixed.

    Severity: info when only unsupported precisions were left out, warning when the budget
    stopped a run, error when no precision ran a single step (the gate checked nothing).

    Thresholds: none. Confidence 1.0 (the run's status is a fact).
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
        # A gate that ran no step at all has checked nothing, so it must not pass.
        nothing_ran = not any(r.steps for r in ctx.trace.runs)
        timed_out = any(r.status == "timeout" for r in runs)
        severity = Severity.ERROR if nothing_ran else Severity.WARNING if timed_out else Severity.INFO
        fixes = []
        if timed_out:
            fixes.append("raise --max-seconds or lower --steps")
        if any(r.status == "unsupported" for r in runs):
            fixes.append("drop the precision this device's torch cannot run, or scan on a device that runs it "
                         "(for example `-p 32-true`, or `--device cuda`)")
        title = (f"nothing was scanned: none of the {len(ctx.trace.runs)} precision run(s) completed a step"
                 if nothing_ran else f"{len(runs)} precision run(s) incomplete")
        return [Finding(self.id, severity.value, 1.0, title + (" (a step hung)" if hung else ""),
                        [f"{r.precision}: {r.status} ({r.note})" for r in runs], "; ".join(fixes),
                        precisions=[r.precision for r in runs])]
