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
        timed_out = any(r.status == "timeout" for r in runs)
        return [Finding(self.id, (Severity.WARNING if timed_out else Severity.INFO).value, 1.0,
                        f"{len(runs)} precision run(s) incomplete" + (" (a step hung)" if hung else ""),
                        [f"{r.precision}: {r.status} ({r.note})" for r in runs],
                        "raise --max-seconds or lower --steps", precisions=[r.precision for r in runs])]
