"""A failure that did not come back on replay."""
from __future__ import annotations

from ...trace import RunTrace
from ..finding import Finding, Severity
from .base import Context, Rule
from ..facts import compile_explains


class Nonreproducible(Rule):
    """What it detects: a step that produced NaN/Inf in the recorded run but stayed finite when
    replayed from the same weights, optimizer state, batch and random seed.

    Why it produces NaN or Inf: something outside the model's arithmetic: non-deterministic
    kernels (atomics on GPU), a data loader that returns different data, or hardware faults.

    Evidence used: the replay outcome of the failing step; the execution paths the recorded run
    and the replay took, where they differ (`runs[].replay_paths`).

    How to fix: make the run deterministic (`torch.use_deterministic_algorithms(True)`, fixed
    data order) and scan again; on one machine only, suspect the hardware. When the replay took
    another execution path than the recorded run (an SDPA backend, a fused fast path, a fused or
    foreach optimizer, autocast, the device: the bundle's `paths`), it did not replay the recorded
    arithmetic: the evidence names the path that differed and the fix how to test it (replay on
    the recorded device, or force the other path in the run).

    Example: a NaN at step 812 that a replay of step 812 does not show.

    A compiled run whose failing step a compiler stage makes non-finite again is
    `compile-numerics` instead; a compiled run whose step was not replayed under the compiler
    (`nandoctor run` re-runs it in eager) is told to confirm with compilation off.

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
                        "reproduce on replay", [r.first_nonfinite.detail, *_path_evidence(r), *_compiled_evidence(r)],
                        _fix(r),
                        precisions=[r.precision])
                for r in runs if r.first_nonfinite is not None]


def _compiled_evidence(run: RunTrace) -> list[str]:
    replay = run.compile_replay
    if replay is None:
        return []
    backend = replay.recorded.get("backend") or "a compiled training step"
    if replay.stages:
        return [f"the run was compiled ({backend}); replayed down the compiler's ladder, the step stayed finite too:",
                *("  " + row for row in replay.table())]
    return [f"the run was compiled ({backend}); {replay.note}" if replay.note else f"the run was compiled ({backend})"]


def _path_evidence(run: RunTrace) -> list[str]:
    differences = run.replay_paths.differences if run.replay_paths is not None else []
    if not differences:
        return []
    return ["the replay did not take the recorded run's path, so it did not replay the same arithmetic:",
            *("  " + d.sentence() for d in differences)]


def _fix(run: RunTrace) -> str:
    differences = run.replay_paths.differences if run.replay_paths is not None else []
    replay = run.compile_replay
    if differences and (replay is None or not replay.stages):
        first = differences[0]
        return (f"the replay did not take the recorded path ({first.short()}), so its finite result does not clear "
                f"the recorded failure: {first.fix}")
    if replay is not None and not replay.stages:
        # Eager stayed finite and the compiler was not tried: the compiled program is the first suspect.
        return ("the run was compiled and the eager re-run stayed finite, so the compiled program may have made the "
                "NaN: confirm with compilation off (`TORCHDYNAMO_DISABLE=1`), and replay a `nandoctor.watch` bundle "
                "with `nandoctor replay BUNDLE --model FILE` to find the compiler stage (compile-numerics); else make "
                "data order and kernels deterministic (`torch.use_deterministic_algorithms(True)`)")
    return "make data order and kernels deterministic (`torch.use_deterministic_algorithms(True)`) and scan again"
