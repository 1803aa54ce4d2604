"""A failure that did not come back on replay."""
from __future__ import annotations

from ..finding import Finding, Severity
from .base import Context, Rule
from ..facts import compile_explains


class Nonreproducible(Rule):
    """What it detects: a step that produced NaN/Inf in the recorded run but stayed finite when
    replayed from the same weights, optimizer state, batch and random seed.

    Why it produces NaN or Inf: something outside the model's arithmetic: non-deterministic
    kernels (atomics on GPU), a data loader that returns different data, or hardware faults.

    Evidence used: the replay outcome of the failing step.

    How to fix: make the run deterministic (`torch.use_deterministic_algorithms(True)`, fixed
    data order) and scan again; on one machine only, suspect the hardware.

    Example: a NaN at step 812 that a replay of step 812 does not show.

    A compiled run whose failing step a compiler stage makes non-finite again is
    `compile-numerics` instead.

    Thresholds: none; claimed only when both replays (untraced and traced) stayed finite. Confidence
    0.6. Severity error: the recorded run went non-finite, so the run fails whatever the replay
    showed; this finding is the explanation the report leads with.
    """

    id = "nonreproducible"
    title = "the failure did not reproduce"

    def check(self, ctx: Context) -> list[Finding]:
        runs = [r for r in ctx.trace.runs if r.first_nonfinite is not None and r.first_nonfinite.reproduced is False
                and not compile_explains(r)]   # a compiler stage reproduced it: compile-numerics
        return [Finding(self.id, Severity.ERROR.value, 0.6, f"{r.precision}: step {r.first_nonfinite.step} did not "
                        "reproduce on replay", [r.first_nonfinite.detail], "make data order and kernels deterministic "
                        "(`torch.use_deterministic_algorithms(True)`) and scan again", precisions=[r.precision])
                for r in runs if r.first_nonfinite is not None]
