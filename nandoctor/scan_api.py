"""`nandoctor.scan(...)`: the whole pipeline, load -> run -> trace -> diagnose -> report document."""
from __future__ import annotations

import ast
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from . import __version__
from .config import ResolvedConfig, resolve_config
from .diagnose import Finding, diagnose, plan_experiments, verdict as verdict_of
from .document import build_document, exit_code_for, first_nonfinite
from .load.model_file import ModelFile, load_model_file
from .precision import parse_precision
from .run.experiments import run_experiments
from .run.frames import location
from .run.runner import Deadline, Progress, ScanTimeout, resolve_device, run_precision, watchdog
from .trace import ModelInfo, NonfiniteEvent, RunStatus, RunTrace, SourceLocation, Trace


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
        return verdict_of(self.causes)

    @property
    def first_nonfinite(self) -> Optional[NonfiniteEvent]:
        return first_nonfinite(self.trace)

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.causes, self.fail_on)

    def to_dict(self) -> dict[str, Any]:
        if self._document is None:
            self._document = build_document(self.trace, self.causes, self.fail_on)
        return self._document


def scan(model_file: str | Path, config: str | Path | None = None, *, steps: Optional[int] = None,
         precisions: Optional[list[str]] = None, lr: Optional[float] = None, seed: Optional[int] = None,
         device: Optional[str] = None, experiments: Optional[bool] = None, max_seconds: Optional[float] = None,
         fail_on: Optional[str] = None, checkpoint: str | Path | None = None, trust: bool = False,
         progress: Optional[Progress] = None, cwd: str | Path | None = None) -> ScanReport:
    """Scan a model file: run real training steps per precision, locate the first NaN/Inf,
    diagnose causes, and test the leading ones with confirming experiments.

    Raises nandoctor.errors.InputError for input that cannot be used (exit code 2 in the CLI).
    """
    overrides: dict[str, Any] = {"steps": steps, "precisions": precisions, "seed": seed, "device": device,
                                 "max_seconds": max_seconds, "fail_on": fail_on, "lr": lr}
    if experiments is not None:
        overrides["experiments"] = {"enabled": experiments}
    resolved = resolve_config(config, overrides, cwd=cwd)
    cfg = dict(resolved.values)
    cfg["lr_override"] = lr
    spec = load_model_file(model_file)
    dev = resolve_device(cfg["device"])
    began = time.perf_counter()
    deadline = Deadline(cfg["max_seconds"])

    initial_state = None
    start_step = 0
    if checkpoint is not None:
        from .load.checkpoint import resume_state
        initial_state, start_step = resume_state(checkpoint, trust=trust)

    trace = Trace(model_file=spec.display, config=cfg, device=str(dev), torch_version=torch.__version__,
                  tool_version=__version__, checkpoint=str(checkpoint) if checkpoint else None,
                  functions=_function_locations(spec))
    with watchdog(cfg["max_seconds"]):
        _run_all(trace, spec, cfg, dev, deadline, start_step, initial_state, progress)
    trace.model = _model_info(spec, cfg)
    findings = diagnose(trace)
    if cfg["experiments"]["enabled"] and not deadline.expired:
        requests = plan_experiments(trace, findings)
        if requests:
            t0 = time.perf_counter()
            budget = min(cfg["experiments"]["max_seconds"], deadline.left())
            lrs = {r.precision: r.optimizer.get("lr") for r in trace.runs}
            try:
                with watchdog(None if cfg["max_seconds"] is None else deadline.left()):
                    trace.experiments = run_experiments(requests, spec, cfg, dev, budget, start_step=start_step,
                                                        initial_state=initial_state, lr_of=lrs.get)
            except ScanTimeout:
                trace.notes.append("--max-seconds ran out during the confirming experiments; they were stopped")
            trace.experiments_seconds = time.perf_counter() - t0
            findings = diagnose(trace)
    trace.seconds = time.perf_counter() - began
    if any(r.status == "timeout" for r in trace.runs):
        trace.notes.append("the --max-seconds budget stopped part of the scan; see runs[].note")
    return ScanReport(trace=trace, causes=findings, config=resolved, fail_on=cfg["fail_on"])


def _run_all(trace: Trace, spec: ModelFile, cfg: dict[str, Any], dev: torch.device, deadline: Deadline,
             start_step: int, initial_state: Any, progress: Optional[Progress]) -> None:
    for name in cfg["precisions"]:
        precision = parse_precision(name)
        if deadline.expired:
            trace.runs.append(RunTrace(precision=precision.value, status=RunStatus.TIMEOUT.value,
                                       steps_requested=cfg["steps"], note="--max-seconds ran out before this run began"))
            continue
        try:
            trace.runs.append(run_precision(spec, cfg, precision, dev, deadline, start_step=start_step,
                                            initial_state=initial_state, progress=progress))
        except ScanTimeout:   # fired outside a step (building the model, the replay)
            trace.runs.append(RunTrace(precision=precision.value, status=RunStatus.TIMEOUT.value,
                                       steps_requested=cfg["steps"], note="--max-seconds ran out while this run was set up "
                                       "or its failing step replayed"))


def _model_info(spec: ModelFile, cfg: dict[str, Any]) -> ModelInfo:
    # Facts of the model's structure, from a throwaway CPU build (cheap; no training).
    from .run.session import seed_everything
    seed_everything(cfg["seed"])
    try:
        model = spec.build_model()
    except Exception:  # noqa: BLE001 - reported by the runs already
        return ModelInfo()
    types: dict[str, int] = {}
    modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
    for m in modules:
        types[type(m).__name__] = types.get(type(m).__name__, 0) + 1
    params = list(model.parameters()) if modules else []
    return ModelInfo(cls=type(model).__name__, modules=len(modules), parameters=sum(p.numel() for p in params),
                     trainable=sum(p.numel() for p in params if p.requires_grad), module_types=types)


def _function_locations(spec: ModelFile) -> dict[str, SourceLocation]:
    """Def lines of the contract functions; for build_optimizer, its `lr=` line when present."""
    out: dict[str, SourceLocation] = {}
    try:
        tree = ast.parse(spec.path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return out
    path = str(spec.path)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in ("build_model", "get_batch", "loss_fn", "build_optimizer"):
            line = node.lineno
            if node.name == "build_optimizer":
                for sub in ast.walk(node):
                    if isinstance(sub, ast.keyword) and sub.arg in ("lr", "eps"):
                        line = sub.value.lineno
                        break
            out[node.name] = location(path, line, node.name)
    return out
