"""The Python API: `scan()`, `postmortem()`, `replay()` and `run_script()`, each the whole pipeline
load -> run -> trace -> diagnose -> report document. The CLI is a thin shell over these."""
from __future__ import annotations

import ast
import contextlib
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ._version import __version__
from .errors import InputError
from .diagnose import Finding, diagnose, diagnose_checkpoint, plan_experiments, rank
from .diagnose.verdict import checkpoint_failed, exit_code_for, scan_failed, verdict as verdict_of
from .load.config import ResolvedConfig, resolve_config
from .load.model_file import ModelFile, load_model_file
from .report.document import build_document, build_postmortem_document, first_nonfinite
from .load.bundle import STATE_AFTER_STEP, decode_value
from .run.bundles.rebuild import (after_step_run, bundle_model_file, differences, early_warning_records, history_records, mark_not_reproduced,
                                  scaler_loader)
from .run.experiments import run_experiments
from .run.frames import location
from .run.heap import frozen_heap
from .run.precision import parse_precision
from .run.bundles.ranks import describe_ranks, open_rank_bundle   # one rank of a torchrun bundle
from .run.runner import Deadline, Progress, ScanTimeout, resolve_device, run_precision, watchdog
from .run.threads import fit_threads
from .run.user_code import ScanInterrupted, capture_user_output, interrupt_guard
from .trace import (ErrorCategory, NonfiniteEvent, PostmortemTrace, Precision, RunStatus, RunTrace, SourceLocation, Trace,
                    to_plain)


@dataclass
class ScanReport:
    """What a scan found. `to_dict()` is the documented JSON document."""
    trace: Trace
    causes: list[Finding]
    config: ResolvedConfig
    fail_on: str = "error"
    _document: Optional[dict[str, Any]] = field(default=None, repr=False)

    @property
    def verdict(self) -> str:
        return verdict_of(self.causes, scan_failed(self.trace))

    @property
    def first_nonfinite(self) -> Optional[NonfiniteEvent]:
        return first_nonfinite(self.trace)

    @property
    def interrupted(self) -> bool:
        """Ctrl-C stopped the scan; the report covers what ran before it (the CLI exits 130)."""
        return any(r.stopped_by == ErrorCategory.USER_INTERRUPT.value for r in self.trace.runs)

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.causes, self.fail_on, scan_failed(self.trace))

    def to_dict(self) -> dict[str, Any]:
        if self._document is None:
            self._document = build_document(self.trace, self.causes, self.fail_on)
        return self._document


def scan(model_file: str | Path, config: str | Path | None = None, *, steps: Optional[int] = None,
         precisions: Optional[list[str]] = None, lr: Optional[float] = None, seed: Optional[int] = None,
         device: Optional[str] = None, experiments: Optional[bool] = None, max_seconds: Optional[float] = None,
         fail_on: Optional[str] = None, checkpoint: str | Path | None = None, trust: bool = False,
         progress: Optional[Progress] = None, cwd: str | Path | None = None,
         threads: str | int | None = None, compile: bool | str | None = None) -> ScanReport:
    """Scan a model file: run real training steps per precision, locate the first NaN/Inf,
    diagnose causes, and test the leading ones with confirming experiments.

    Raises nandoctor.errors.InputError for input that cannot be used (exit code 2 in the CLI).
    """
    with preserved_rng_states(), preserved_threads(), capture_user_output(), interrupt_guard(), frozen_heap():
        return _scan(model_file, config, steps=steps, precisions=precisions, lr=lr, seed=seed, device=device,
                     experiments=experiments, max_seconds=max_seconds, fail_on=fail_on, checkpoint=checkpoint,
                     trust=trust, progress=progress, cwd=cwd, threads=threads, compile=compile)


@contextlib.contextmanager
def preserved_threads():
    """The scan may lower torch's thread count (config key threads); the caller's comes back after.
    Torch.compile's first use turns off torch.distributions' argument checks for the whole process
    (torch/_dynamo/eval_frame.py); a scan that compiles (`compile`, the compile ladder) gives the
    caller's setting back too."""
    before = torch.get_num_threads()
    validate = torch.distributions.Distribution._validate_args
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
        torch.distributions.Distribution.set_default_validate_args(validate)


@contextlib.contextmanager
def preserved_rng_states():
    """The scan seeds Python's, numpy's and torch's global generators; the caller's states come back after."""
    py_state = random.getstate()
    numpy = sys.modules.get("numpy")
    np_state = numpy.random.get_state() if numpy is not None else None
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        if np_state is not None:
            numpy.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def _scan(model_file: str | Path, config: str | Path | None, *, steps: Optional[int], precisions: Optional[list[str]],
          lr: Optional[float], seed: Optional[int], device: Optional[str], experiments: Optional[bool],
          max_seconds: Optional[float], fail_on: Optional[str], checkpoint: str | Path | None, trust: bool,
          progress: Optional[Progress], cwd: str | Path | None, threads: str | int | None = None,
          compile: bool | str | None = None) -> ScanReport:
    overrides: dict[str, Any] = {"steps": steps, "precisions": precisions, "seed": seed, "device": device,
                                 "max_seconds": max_seconds, "fail_on": fail_on, "lr": lr, "threads": threads,
                                 # --compile (True) keeps a backend the config names; a name or False wins
                                 "compile": None if compile is True else compile}
    if experiments is not None:
        overrides["experiments"] = {"enabled": experiments}
    resolved = resolve_config(config, overrides, cwd=cwd)
    cfg = dict(resolved.values)
    cfg["lr_override"] = lr
    if compile is True and not cfg["compile"]:
        cfg["compile"] = True
    spec = load_model_file(model_file)
    dev = resolve_device(cfg["device"])
    began = time.perf_counter()
    deadline = Deadline(cfg["max_seconds"])

    initial_state = None
    start_step = 0
    if checkpoint is not None:
        from .run.checkpoints.resume import resume_state
        initial_state, start_step = resume_state(checkpoint, trust=trust)

    trace = Trace(model_file=spec.display, config=cfg, device=str(dev), torch_version=torch.__version__,
                  tool_version=__version__, checkpoint=str(checkpoint) if checkpoint else None,
                  functions=_function_locations(spec), threads=fit_threads(cfg["threads"]))
    with watchdog(cfg["max_seconds"]):
        interrupted = _run_all(trace, spec, cfg, dev, deadline, start_step, initial_state, progress)
    findings = diagnose(trace)
    if cfg["experiments"]["enabled"] and not deadline.expired and not interrupted:
        findings = _confirm(trace, findings, spec, cfg, dev, deadline, start_step, initial_state)
    trace.seconds = time.perf_counter() - began
    if any(r.status == "timeout" for r in trace.runs):
        trace.notes.append("the --max-seconds budget stopped part of the scan; see runs[].note")
    if interrupted:
        trace.notes.append("interrupted (Ctrl-C): this report covers only what ran before it; see runs[].note")
    return ScanReport(trace=trace, causes=findings, config=resolved, fail_on=cfg["fail_on"])


def _run_all(trace: Trace, spec: ModelFile, cfg: dict[str, Any], dev: torch.device, deadline: Deadline,
             start_step: int, initial_state: Any, progress: Optional[Progress]) -> bool:
    """Run every precision into `trace`; True when Ctrl-C stopped the scan."""
    interrupted = False
    for name in cfg["precisions"]:
        precision = parse_precision(name)
        if interrupted:
            trace.runs.append(RunTrace(precision=precision.value, status=RunStatus.INTERRUPTED.value,
                                       steps_requested=cfg["steps"], stopped_by=ErrorCategory.USER_INTERRUPT.value,
                                       note="interrupted (Ctrl-C) before this run began"))
            continue
        if deadline.expired:
            trace.runs.append(RunTrace(precision=precision.value, status=RunStatus.TIMEOUT.value,
                                       steps_requested=cfg["steps"], note="--max-seconds ran out before this run began"))
            continue
        try:
            trace.runs.append(run_precision(spec, cfg, precision, dev, deadline, start_step=start_step,
                                            initial_state=initial_state, progress=progress, model_info=trace.model))
            interrupted = trace.runs[-1].stopped_by == ErrorCategory.USER_INTERRUPT.value
        except ScanTimeout:   # fired outside a step (building the model, the replay)
            trace.runs.append(RunTrace(precision=precision.value, status=RunStatus.TIMEOUT.value,
                                       steps_requested=cfg["steps"], note="--max-seconds ran out while this run was set up "
                                       "or its failing step replayed"))
        except ScanInterrupted:
            interrupted = True
            trace.runs.append(RunTrace(precision=precision.value, status=RunStatus.INTERRUPTED.value,
                                       steps_requested=cfg["steps"], stopped_by=ErrorCategory.USER_INTERRUPT.value,
                                       note="interrupted (Ctrl-C) while this run was in progress; its steps are not "
                                       "reported"))
    # fp16-underflow compares zero-gradient shares with float32: when only 16-true ran, add a
    # float32 run of the same steps for comparison (never part of the verdict; no replay).
    half = trace.run(Precision.FP16_TRUE.value)
    if half is not None and half.steps and trace.run(Precision.FP32.value) is None and not deadline.expired:
        try:
            trace.reference_runs.append(run_precision(spec, {**cfg, "steps": len(half.steps)}, Precision.FP32, dev,
                                                      deadline, start_step=start_step, initial_state=initial_state,
                                                      replay=False))
        except ScanTimeout:
            trace.notes.append("--max-seconds ran out during the float32 reference run; it was dropped")
    return interrupted


def _confirm(trace: Trace, findings: list[Finding], spec: ModelFile, cfg: dict[str, Any], dev: torch.device,
             deadline: Deadline, start_step: int, initial_state: Optional[Callable]) -> list[Finding]:
    """Run the confirming experiments the findings ask for, within what is left of the budget,
    and diagnose again with their outcomes (scan and replay alike)."""
    requests = plan_experiments(trace, findings)
    if not requests:
        return findings
    t0 = time.perf_counter()
    budget = min(cfg["experiments"]["max_seconds"], deadline.left())
    try:
        with watchdog(None if cfg["max_seconds"] is None else deadline.left()):
            trace.experiments = run_experiments(requests, spec, cfg, dev, budget, start_step=start_step,
                                                initial_state=initial_state)
    except ScanTimeout:
        trace.notes.append("--max-seconds ran out during the confirming experiments; they were stopped")
    except ScanInterrupted:
        trace.notes.append("interrupted (Ctrl-C) during the confirming experiments; they were stopped")
    trace.experiments_seconds = time.perf_counter() - t0
    return diagnose(trace)


def _function_locations(spec: ModelFile) -> dict[str, SourceLocation]:
    """Def lines of the contract functions; for build_optimizer, its `lr=` line when present; for
    build_scheduler, the line that returns the schedule."""
    out: dict[str, SourceLocation] = {}
    try:
        tree = ast.parse(spec.path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return out
    path = str(spec.path)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in ("build_model", "get_batch", "loss_fn", "build_optimizer",
                                                               "build_scheduler"):
            line = node.lineno
            if node.name == "build_scheduler":     # the schedule itself: the line that returns it
                returns = [sub for sub in ast.walk(node) if isinstance(sub, ast.Return) and sub.value is not None]
                line = returns[-1].lineno if returns else line
            if node.name == "build_optimizer":
                for sub in ast.walk(node):
                    if isinstance(sub, ast.keyword) and sub.arg in ("lr", "eps"):
                        line = sub.value.lineno
                        break
            out[node.name] = location(path, line, node.name)
    return out


@dataclass
class PostmortemReport:
    """What a checkpoint holds and what is wrong with it. `to_dict()` is the JSON document."""
    trace: PostmortemTrace
    causes: list[Finding]
    fail_on: str = "error"

    @property
    def verdict(self) -> str:
        return verdict_of(self.causes, checkpoint_failed(self.trace))

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.causes, self.fail_on, checkpoint_failed(self.trace))

    def to_dict(self) -> dict[str, Any]:
        return build_postmortem_document(self.trace, self.causes, self.fail_on)


def postmortem(path: str | Path, baseline: str | Path | None = None, *, trust: bool = False,
               fail_on: str = "error") -> PostmortemReport:
    """Examine checkpoint `path` (and optionally an earlier `baseline`) without executing
    anything from it, and diagnose what is broken.

    Raises nandoctor.errors.InputError for a file that cannot be read (exit code 2 in the CLI).
    """
    # Imported here: the checkpoint readers are postmortem's alone (~10 ms of every other command's start).
    from .load.checkpoint import read_checkpoint
    from .run.checkpoints.inspect import inspect
    with preserved_rng_states():
        ckpt = read_checkpoint(path, trust)
        base = read_checkpoint(baseline, trust) if baseline is not None else None
        trace = inspect(ckpt, base)
    trace.torch_version = torch.__version__
    return PostmortemReport(trace=trace, causes=rank(diagnose_checkpoint(trace)), fail_on=fail_on)


@dataclass
class ReplayReport(ScanReport):
    """A scan report (schema v1) with `command: "replay"`, the bundle's facts and its history."""
    bundle: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        if self._document is None:
            doc = super().to_dict()
            doc["command"] = "replay"
            doc["bundle"] = to_plain(self.bundle)
            doc["history"] = to_plain(self.history)
            self._document = doc
        return self._document


def replay(bundle: str | Path, model: str | Path | None = None, *, trust: bool = False,
           experiments: Optional[bool] = None, fail_on: Optional[str] = None, max_seconds: Optional[float] = None,
           device: Optional[str] = None, config: str | Path | None = None, rank: Optional[int] = None) -> ReplayReport:
    """Replay a crash bundle's failing step: origin, ranked causes, confirming experiments.

    `model`: a model file with build_model() and training_step(model, batch) or
    loss_fn(outputs, targets); required for plain-loop bundles. `trust`: allow importing the
    LightningModule class a Lightning bundle names. `rank`: which rank of a distributed bundle
    (default: the rank the value was born on). Raises InputError for unusable input.
    """
    with preserved_rng_states(), preserved_threads(), capture_user_output(), interrupt_guard():
        return _replay(bundle, model, trust=trust, experiments=experiments, fail_on=fail_on,
                       max_seconds=max_seconds, device=device, config=config, rank=rank)


def _replay(bundle: str | Path, model: str | Path | None, *, trust: bool, experiments: Optional[bool],
            fail_on: Optional[str], max_seconds: Optional[float], device: Optional[str], config: str | Path | None,
            rank: Optional[int]) -> ReplayReport:
    began = time.perf_counter()
    found, ranks = open_rank_bundle(bundle, rank)
    m = found.manifest
    precision = parse_precision(m.precision)
    overrides: dict[str, Any] = {"steps": 1, "precisions": [precision.value], "device": device,
                                 "max_seconds": max_seconds, "fail_on": fail_on, "grad_clip": m.grad_clip}
    if experiments is not None:
        overrides["experiments"] = {"enabled": experiments}
    resolved = resolve_config(config, overrides, cwd=None)     # as scan: discovered from the working directory
    cfg = dict(resolved.values)
    cfg["lr_override"] = None
    if m.scaler is None:
        cfg["loss_scale"] = "none"
    dev = resolve_device(cfg["device"])
    if model is None and (m.rebuild or {}).get("kind") == "script" and m.state != STATE_AFTER_STEP:
        return _replay_script(found, ranks, trust, cfg, resolved, began)
    if model is None and (m.rebuild or {}).get("kind") == "script":
        return _replay_script_after_step(found, ranks, cfg, resolved, precision.value, began)
    spec, model_info = bundle_model_file(found, model, trust)
    trace = Trace(model_file=spec.display, config=cfg, device=str(dev), torch_version=torch.__version__,
                  tool_version=__version__, checkpoint=str(found.path),
                  functions=_function_locations(spec) if model is not None else {},
                  framework=str((m.rebuild or {}).get("kind", "plain")))
    trace.notes.extend(differences(found, dev))
    if ranks is not None:
        trace.notes.insert(0, describe_ranks(ranks))
    initial_state = scaler_loader(found)
    deadline = Deadline(cfg["max_seconds"])

    if m.state == STATE_AFTER_STEP:
        run = after_step_run(found, precision.value)
        trace.notes.append("the bundle holds the state after the failing optimizer step (the NaN was born inside "
                           "optimizer.step()); watch(..., snapshot=True) keeps the state before it so the step "
                           "can be replayed")
    else:
        try:
            with watchdog(cfg["max_seconds"]):
                run = run_precision(spec, cfg, precision, dev, deadline, start_step=m.step,
                                    initial_state=initial_state)
        except ScanTimeout:
            run = RunTrace(precision=precision.value, status=RunStatus.TIMEOUT.value, steps_requested=1,
                           start_step=m.step, note="--max-seconds ran out while the step was replayed")
        if run.status == RunStatus.OK.value:
            mark_not_reproduced(run, found)
            if m.compile is not None and cfg["compile_ladder"]["enabled"] and not deadline.expired:
                run.compile_replay = _compile_replay(found, spec, cfg, precision, dev, initial_state, deadline)
        if run.status in (RunStatus.OK.value, RunStatus.NONFINITE.value) and not deadline.expired:
            # Which attention kernels, fast paths and optimizer implementation the replay took,
            # beside the recorded run's: a finite replay on another path did not replay its
            # arithmetic, so its step is run once more, observed; a reproduced one compares settings.
            finite = run.first_nonfinite is not None and run.first_nonfinite.reproduced is False
            run.replay_paths = _replay_paths(found, spec, cfg, precision, dev, initial_state, deadline, observe=finite)
    # What the watched run saw before this step: the loss, gradient norm and lr that led here.
    run.history = history_records(found)
    run.early_warnings = early_warning_records(found)
    trace.runs.append(run)
    trace.model = model_info()
    findings = diagnose(trace)
    if cfg["experiments"]["enabled"] and m.state != STATE_AFTER_STEP and not deadline.expired:
        findings = _confirm(trace, findings, spec, cfg, dev, deadline, m.step, initial_state)
    trace.seconds = time.perf_counter() - began
    return ReplayReport(trace=trace, causes=findings, config=resolved, fail_on=cfg["fail_on"],
                        bundle=_bundle_facts(found, ranks), history=[{k: decode_value(v) for k, v in h.items()} for h in m.history])


def _compile_replay(found: Any, spec: ModelFile, cfg: dict[str, Any], precision: Any, dev: torch.device,
                    initial_state: Any, deadline: Deadline) -> Any:
    """A compiled run whose step stayed finite in eager: the step down torch.compile's ladder, the
    repro written beside the bundle (`<bundle>-compile-repro.py`)."""
    from .run.compile_ladder import compile_ladder
    try:
        with watchdog(None if cfg["max_seconds"] is None else deadline.left()):
            return compile_ladder(spec, cfg, precision, dev, found.manifest.step, found.manifest.compile or {},
                                  initial_state=initial_state, repro_at=found.path, deadline=deadline,
                                  stage_names=cfg["compile_ladder"]["stages"], bisect=cfg["compile_ladder"]["bisect"])
    except ScanTimeout:
        from .trace import CompileReplay
        return CompileReplay(recorded=dict(found.manifest.compile or {}),
                             note="--max-seconds ran out while the step was replayed under the compiler")


def _replay_paths(found: Any, spec: ModelFile, cfg: dict[str, Any], precision: Any, dev: torch.device,
                  initial_state: Any, deadline: Deadline, observe: bool) -> Any:
    from .run.bundles.paths import replay_paths
    try:
        with watchdog(None if cfg["max_seconds"] is None else deadline.left()):
            return replay_paths(found, spec, cfg, precision, dev, initial_state=initial_state, observe=observe)
    except ScanTimeout:
        return None


def _bundle_facts(found: Any, ranks: Optional[dict[str, Any]]) -> dict[str, Any]:
    m = found.manifest
    facts = {"path": str(found.path), "step": m.step, "check": m.check, "what": m.what, "state": m.state,
             "precision": m.precision, "micro_batches": m.micro_batches, "policy": m.policy,
             "rebuild": (m.rebuild or {}).get("kind"), "device": m.device, "versions": m.versions,
             "size_bytes": m.size_bytes, "write_seconds": m.write_seconds, "created": m.created,
             "compile": m.compile}
    if ranks is not None:
        facts["distributed"] = ranks
    return facts


def _replay_script(found: Any, ranks: Optional[dict[str, Any]], trust: bool, cfg: dict[str, Any],
                   resolved: ResolvedConfig, began: float) -> ReplayReport:
    """A bundle of a training script: run the script again (--trust) with its first training
    iteration made the failing step, traced op by op (watcher/script_replay.py)."""
    from .watcher.script_replay import history_records, replay_script
    from .watcher.script_trace import script_trace
    if ranks is not None and "WORLD_SIZE" not in os.environ:
        world = ranks.get("world_size", "N")
        raise InputError(f"crash bundle {found.path} comes from a {world}-rank torchrun job of a training script; its "
                         f"replay runs the script again, so start it the same way: `torchrun --nproc-per-node {world} "
                         f"-m nandoctor replay {found.path.parent if found.path.name.startswith('rank-') else found.path} "
                         "--trust`.")
    target, guard, outcome = replay_script(found, trust)
    history = history_records(found)
    trace = script_trace(target, guard, outcome, cfg, history=history)
    if trace.runs and guard.stop is not None and guard.stop.watch is not None:
        from .run.bundles.paths import settings_paths
        watch = guard.stop.watch
        device = next((p.device for p in watch.model.parameters()), torch.device("cpu"))
        trace.runs[0].replay_paths = settings_paths(found, watch.model, [watch.optimizer], device, watch.precision)
    trace.notes = [n for n in trace.notes if not n.startswith("crash bundle:")] + guard.load_notes
    if ranks is not None:
        trace.notes.insert(0, describe_ranks(ranks))
    trace.checkpoint = str(found.path)
    trace.seconds = time.perf_counter() - began
    findings = diagnose(trace)
    return ReplayReport(trace=trace, causes=findings, config=resolved, fail_on=cfg["fail_on"],
                        bundle=_bundle_facts(found, ranks), history=history)


def _replay_script_after_step(found: Any, ranks: Optional[dict[str, Any]], cfg: dict[str, Any],
                              resolved: ResolvedConfig, precision: str, began: float) -> ReplayReport:
    """A script's bundle written after the optimizer step that made the NaN: its weights are
    already non-finite, so running the script again would only trace NaN weights. The state, the
    optimizer's settings and the history are the evidence, as for a model file's bundle; nothing is
    executed, so no --trust is needed."""
    from .watcher.script_replay import history_records as script_history
    script = ((found.manifest.rebuild or {}).get("script") or {}).get("path") or "script"
    trace = Trace(model_file=str(script), config=cfg, device="cpu", torch_version=torch.__version__,
                  tool_version=__version__, checkpoint=str(found.path), framework="script")
    if ranks is not None:
        trace.notes.append(describe_ranks(ranks))
    run = after_step_run(found, precision)
    run.history = history_records(found)
    run.early_warnings = early_warning_records(found)
    trace.runs.append(run)
    trace.notes.append("the bundle holds the state after the failing optimizer step (the NaN was born inside "
                       "optimizer.step()): diagnosed from that state and the optimizer's settings, without running "
                       "the script again")
    trace.seconds = time.perf_counter() - began
    findings = diagnose(trace)
    return ReplayReport(trace=trace, causes=findings, config=resolved, fail_on=cfg["fail_on"],
                        bundle=_bundle_facts(found, ranks), history=script_history(found))


@dataclass
class RunReport(ScanReport):
    """What `nandoctor run` found in a training script: the scan document (schema v1) with
    `command: "run"`, the script's facts and the watched run's history."""
    script: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    script_exit_code: Optional[int] = None     # the script's own exit status when it ran to its end

    @property
    def origin_elsewhere(self) -> bool:
        """Under torchrun: this rank only received the NaN; another rank's report names its origin."""
        ranks = self.script.get("ranks") or {}
        return bool(ranks.get("origin_ranks")) and ranks.get("rank") not in ranks["origin_ranks"]

    @property
    def exit_code(self) -> int:
        code = super().exit_code
        # A healthy script's own exit status passes through, as `python train.py` would give it.
        if code == 0 and self.script_exit_code not in (None, 0):
            return int(self.script_exit_code)
        return code

    def to_dict(self) -> dict[str, Any]:
        if self._document is None:
            doc = build_document(self.trace, self.causes, self.fail_on, command="run")
            doc["script"] = to_plain(self.script)
            doc["history"] = to_plain(self.history)
            self._document = doc
        return self._document


def run_script(script: str | Path | None = None, args: Optional[list[str]] = None, *, module: Optional[str] = None,
        config: str | Path | None = None, out: str | Path = "nandoctor-bundles", fail_on: Optional[str] = None,
        max_seconds: Optional[float] = None, experiments: Optional[bool] = None, stats_every: int = 50,
        check_every: int = 1, snapshot_every: int = 100, script_stdout_to_stderr: bool = False,
        on_nonfinite: Optional[str] = None, on_spike: Optional[str] = None,
        rollback: Optional[dict[str, Any]] = None, restart_over_mib: Optional[float] = None) -> RunReport:
    """Run an unmodified training script (`python SCRIPT ARGS`, or `-m MODULE` with `module=`)
    under nandoctor's guard. On the first NaN/Inf the script is stopped, the failing step is run
    once more by the script's own loop and traced op by op, a crash bundle is written to `out`,
    and the causes are diagnosed. `on_nonfinite="skip"` or `"rollback"` (and `on_spike`, `rollback`
    as for `watch`) keep the run going instead; left None, they come from the config's `policies`.
    `restart_over_mib` (None: the config's `experiments.restart_over_mib`): over it, no step-0 rewind
    file; lr experiments run the script again from its start.
    Raises InputError when the script cannot be found or a policy is unknown."""
    from .load.script import resolve_script
    from .watcher.script import execute_script
    from .watcher.script_guard import ScriptGuard
    from .watcher.script_trace import script_trace
    overrides: dict[str, Any] = {"fail_on": fail_on, "max_seconds": max_seconds}
    experiment_keys = {key: value for key, value in (("enabled", experiments), ("restart_over_mib", restart_over_mib))
                       if value is not None}
    if experiment_keys:
        overrides["experiments"] = experiment_keys
    policies = {key: value for key, value in (("on_nonfinite", on_nonfinite), ("on_spike", on_spike),
                                              ("rollback", rollback)) if value is not None}
    if policies:
        overrides["policies"] = policies
    resolved = resolve_config(config, overrides, cwd=None)
    cfg = dict(resolved.values)
    target = resolve_script(str(script) if script is not None else None, module, list(args or []))

    def plan_rewinds(live: ScriptGuard) -> list[float]:
        """Asked inside the script, once its failing step is traced: which lr factors to re-train with."""
        from .watcher.rewind import lr_scales
        from .watcher.script import ScriptOutcome
        provisional = script_trace(target, live, ScriptOutcome(stopped=True), cfg)
        requests = plan_experiments(provisional, diagnose(provisional))
        if not any(r.id == "lower-lr" for r in requests):
            return []
        ratios = [s.update_ratio for r in provisional.runs for s in list(r.history) + list(r.steps)
                  if s.update_ratio is not None]
        return lr_scales(max(ratios) if ratios else None)

    guard = ScriptGuard(out=out, stats_every=stats_every, check_every=check_every, max_seconds=cfg["max_seconds"],
                        snapshot_every=snapshot_every, experiments_seconds=cfg["experiments"]["max_seconds"],
                        spikes=cfg["spikes"], early_warnings=cfg["early_warnings"],
                        plan_rewinds=plan_rewinds if cfg["experiments"]["enabled"] else None,
                        on_nonfinite=cfg["policies"]["on_nonfinite"], on_spike=cfg["policies"]["on_spike"],
                        rollback=cfg["policies"]["rollback"],
                        restart_over_bytes=int(cfg["experiments"]["restart_over_mib"] * 2**20))
    output = capture_user_output() if script_stdout_to_stderr else contextlib.nullcontext()
    with output:
        outcome = execute_script(target, guard)
    trace = script_trace(target, guard, outcome, cfg)
    trace.experiments = list(guard.experiments)
    trace.experiments_seconds = sum(e.seconds for e in guard.experiments)
    if guard.snapshot_note:
        trace.notes.append(guard.snapshot_note)
    findings = diagnose(trace)
    stop = guard.stop
    facts: dict[str, Any] = {"path": str(target.path) if target.path else None, "module": target.module,
                             "argv": target.command, "exit_code": outcome.exit_code,
                             "stopped_at_step": stop.step if stop else None,
                             "bundle": str(stop.bundle) if stop and stop.bundle else None,
                             "seconds": round(outcome.seconds, 3)}
    if stop is not None and stop.ranks:
        facts["ranks"] = {k: stop.ranks.get(k) for k in ("rank", "world_size", "origin_ranks", "contaminated_ranks")}
    watch = stop.watch if stop else next(iter(guard.all_watches()), None)
    history = [{k: v for k, v in h.items()} for h in (watch.history if watch is not None else [])]
    return RunReport(trace=trace, causes=findings, config=resolved, fail_on=cfg["fail_on"], script=facts,
                     history=history, script_exit_code=outcome.exit_code)

