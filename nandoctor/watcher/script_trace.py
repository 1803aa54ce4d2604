"""What a guarded script did, as the plain trace every later stage reads (the same `Trace` a scan
and a replay produce): the watched run's history, the step that failed and the origin its
re-run found, or the exception the script raised."""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from .._version import __version__
from ..load.script import TrainingScript
from ..run.batch import batch_stats
from ..run.stats import iter_tensors
from ..run.runner import describe_model
from ..run.session import optimizer_facts
from ..run.user_code import target_out_of_range, user_error
from ..trace import (CompileReplay, ErrorCategory, LoopFacts, ModelInfo, NonfiniteEvent, Phase, RunStatus, RunTrace, StepRecord,
                     Trace)
from ..trace import BlamedSample, Intervention, SampleBlame, UnfinishedStep
from .guard import Watch
from .script import ScriptOutcome
from .guard import batch_name
from .script_guard import ScriptGuard, Stop, phase_of


def script_trace(script: TrainingScript, guard: ScriptGuard, outcome: ScriptOutcome, config: dict[str, Any],
                 history: Optional[list[dict[str, Any]]] = None) -> Trace:
    """The trace of a guarded script; `history` replaces the watch's own (a replay: the bundle's)."""
    watch = _primary_watch(guard)
    trace = Trace(model_file=script.display, config=config, device=str(watch._device) if watch else "cpu",
                  torch_version=torch.__version__, tool_version=__version__)
    if watch is not None:
        info = ModelInfo()
        describe_model(watch.model, info)
        trace.model = info
    run = _run(guard, watch, outcome, history)
    settings = watch.compile_settings() if watch is not None else None
    if settings is not None and run.first_nonfinite is not None and run.first_nonfinite.reproduced is not True:
        # The loop's own re-run of the step is eager; the compiler ladder needs a model file.
        run.compile_replay = CompileReplay(recorded=dict(settings), note=(
            "the step was re-run by the script's own loop in eager mode" if run.first_nonfinite.reproduced is False
            else "the step was not run again") + "; not replayed under the compiler")
    trace.runs.append(run)
    trace.loop = guard.loop_facts(watch)
    trace.framework = guard.framework
    trace.seconds = outcome.seconds
    run.seconds = outcome.seconds
    trace.notes.extend(_notes(guard, outcome, watch))
    return trace


def _primary_watch(guard: ScriptGuard) -> Optional[Watch]:
    if guard.stop is not None:
        return guard.stop.watch
    watches = guard.all_watches()
    return max(watches, key=lambda w: w.step_index) if watches else None


def _record(entry: dict[str, Any]) -> StepRecord:
    return StepRecord(step=int(entry["step"]), loss=entry.get("loss"), grad_norm=entry.get("grad_norm"),
                      lr=entry.get("lr"), loss_scale=entry.get("scale"), skipped=bool(entry.get("skipped")),
                      param_norm=entry.get("param_norm"), update_ratio=entry.get("update_ratio"))


def _run(guard: ScriptGuard, watch: Optional[Watch], outcome: ScriptOutcome,
         history_override: Optional[list[dict[str, Any]]]) -> RunTrace:
    precision = watch.precision if watch is not None else "32-true"
    run = RunTrace(precision=precision)
    if watch is not None:
        run.interventions, run.sample_blame = kept_alive(watch)
    if watch is None:
        run.note = "no training step was seen: the script never ran a forward and an optimizer step (or backward) in training mode"
    else:
        optimizer = guard.optimizer_of(watch)
        if optimizer is not None:
            run.optimizer = optimizer_facts(optimizer)
        else:
            run.optimizer = {"name": "hand-written update (no torch optimizer)"}
        first = next((p for p in watch.model.parameters()), None)
        if first is not None:
            run.param_dtype = str(first.dtype).replace("torch.", "")
    stop = guard.stop
    entries = (history_override if history_override is not None else
               stop.history if stop is not None and stop.history is not None else
               list(watch.history) if watch is not None else [])
    history = [_record(h) for h in entries]
    if watch is not None:
        run.early_warnings = [w for w in watch.early_warnings if stop is None or w.step <= stop.step]
    stop = guard.stop
    if stop is not None:
        before = [h for h in history if h.step < stop.step]
        at = next((h for h in history if h.step == stop.step), None) or StepRecord(step=stop.step)
        # The step the guard skipped is recorded as skipped; it was the failing one, not a skip.
        at.skipped = False
        at.batch = _batch_facts(guard, stop)
        run.history, run.steps, run.start_step = before, [at], stop.step
        run.steps_requested = stop.step + 1
        run.status = RunStatus.NONFINITE.value
        run.first_nonfinite = _event(stop, precision, guard.loop_facts(watch))
        if stop.rerun is not None and stop.rerun.unfinished is not None:
            run.unfinished_step = UnfinishedStep(**stop.rerun.unfinished)
        if stop.raised:
            run.note = f"the model's forward raised {stop.raised} on this batch"
        return run
    run.steps = history
    run.start_step = history[0].step if history else 0
    run.steps_requested = (history[-1].step + 1) if history else 0
    if outcome.interrupted:
        run.status, run.stopped_by = RunStatus.INTERRUPTED.value, ErrorCategory.USER_INTERRUPT.value
    elif outcome.error is not None:
        run.status = RunStatus.ERROR.value
        run.error = user_error(_phase_of_error(guard), outcome.error)
        if target_out_of_range(outcome.error):
            run.error.category = ErrorCategory.LABEL_GUARD.value
    elif guard.final_nonfinite is not None:
        # Nothing fired during the run, yet it ended non-finite: it never passes.
        run.status = RunStatus.NONFINITE.value
        last = run.steps[-1].step if run.steps else 0
        run.first_nonfinite = NonfiniteEvent(precision=precision, step=last, phase=Phase.OPTIMIZER.value, kind="nan",
                                             surfaced_in="parameters", reproduced=None,
                                             detail=f"the script ended non-finite: {guard.final_nonfinite}")
    elif guard.timed_out:
        run.status, run.stopped_by = RunStatus.TIMEOUT.value, ErrorCategory.TIME_BUDGET.value
        run.note = "--max-seconds stopped the script; every step before it stayed finite"
    return run


def _batch_facts(guard: ScriptGuard, stop: Stop) -> list:
    """Ranges and NaN/Inf counts of the failing step's batch (the data rules read them): what the
    DataLoader gave the step, else what the model was called with."""
    drawn = [batch for _, batch, _ in guard.failing_batches]
    if drawn:
        return batch_stats(drawn[0] if len(drawn) == 1 else drawn, None)
    call = next((c for c in guard.failing_calls if c.owns_parameters), None)
    if call is not None:
        # What the model was called with, less its own state carried from the last step (an
        # RNN's hidden state is the model's, not data).
        data = {batch_name(path): t for path, t in iter_tensors({"args": list(call.args), "kwargs": call.kwargs})
                if path not in call.carried}
        return batch_stats(data, None)
    return []


def _phase_of_error(guard: ScriptGuard) -> Phase:
    return guard.phase_at_error or Phase.FORWARD


def _event(stop: Stop, precision: str, loop: Optional[LoopFacts] = None) -> NonfiniteEvent:
    if stop.event is not None:
        return stop.event
    rerun = stop.rerun
    detail = stop.what
    if rerun is not None and rerun.note:
        detail += f"; {rerun.note}"
    event = NonfiniteEvent(precision=precision, step=stop.step, phase=phase_of(stop.check).value, kind="nan",
                           surfaced_in=stop.check, reproduced=rerun.reproduced if rerun is not None else None,
                           replay_traced=rerun.reproduced if rerun is not None else None, detail=detail)
    if stop.check == "parameters" and loop is not None:
        # Born inside the optimizer step: the user's line that ran it (their loop's, or the
        # trainer call that ran it for them).
        event.user_source = event.source = loop.optimizer_step or loop.optimizer_built
    return event


def _notes(guard: ScriptGuard, outcome: ScriptOutcome, watch: Optional[Watch]) -> list[str]:
    notes = []
    stop = guard.stop
    if stop is not None and stop.ranks:
        notes.append(f"torchrun, {stop.ranks.get('world_size')} ranks: {stop.what}")
    if stop is not None and stop.bundle is not None:
        notes.append(f"crash bundle: {stop.bundle} (`nandoctor replay {stop.bundle} --trust` re-runs the script to "
                     "this step and diagnoses it again)")
    if stop is not None and stop.rerun is not None and stop.rerun.losses:
        recorded = next((h.get("loss") for h in (watch.history if watch else []) if h["step"] == stop.step), None)
        rerun_loss = stop.rerun.losses[0]
        if recorded is not None and _differ(recorded, rerun_loss):
            notes.append(f"the re-run's loss ({rerun_loss:.6g}) differs from the recorded one ({recorded:.6g}): the "
                         "loop fed it other data than the failing step had (targets from outside the model's inputs)")
    if outcome.exit_code not in (None, 0):
        notes.append(f"the script exited with code {outcome.exit_code}")
    return notes


def _differ(a: float, b: float) -> bool:
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.isfinite(a) != math.isfinite(b)
    return abs(a - b) > 1e-3 * max(1.0, abs(a))


def kept_alive(watch: Watch) -> tuple[list[Intervention], list[SampleBlame]]:
    """The watch's skips and rollbacks, and the per-sample re-runs of its fired steps, as trace records."""
    keep = watch.keep_alive
    interventions = [Intervention(step=int(e["step"]), policy=e["policy"], check=e.get("check", ""),
                                  reason=e.get("reason", ""), samples=[int(i) for i in e.get("samples") or []],
                                  from_step=(e.get("window") or {}).get("from_step"), note=e.get("note", ""))
                     for e in keep.records]
    blames = [SampleBlame(step=int(b["step"]), check=b["check"], statistic=b["statistic"], method=b["method"] or "",
                          samples=int(b["samples"]), median=b["median"], mad=b["mad"], share=b["share"],
                          dominant=[BlamedSample(index=d["index"], micro_batch=d["micro_batch"], row=d["row"],
                                                 score=d["score"], nonfinite=d["nonfinite"]) for d in b["dominant"]])
              for b in keep.blames]
    return interventions, blames
