"""`nandoctor.replay(bundle)`: the failing step of a crash bundle, re-run with the origin tracer.

The same pipeline as scan: the bundle becomes a model file (run/bundle_replay.py), the step runs
through runner.run_precision (the recorded step, then the traced replay of a failing one),
then diagnose, the confirming experiments from the restored state, and the v1 document with
`command: "replay"`, the bundle's facts and its recent history.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from . import __version__
from .config import resolve_config
from .diagnose import diagnose, plan_experiments
from .load.bundle import STATE_AFTER_STEP, decode_value
from .precision import parse_precision
from .run.bundle_replay import after_step_run, bundle_model_file, differences, mark_not_reproduced, scaler_loader
from .run.experiments import run_experiments
from .run.rank_bundle import describe_ranks, open_rank_bundle   # issue 12: one rank of a torchrun bundle
from .run.runner import Deadline, ScanTimeout, resolve_device, run_precision, watchdog
from .scan_api import ScanReport
from .trace import RunStatus, RunTrace, Trace, to_plain


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
    began = time.perf_counter()
    found, ranks = open_rank_bundle(bundle, rank)
    m = found.manifest
    precision = parse_precision(m.precision)
    overrides: dict[str, Any] = {"steps": 1, "precisions": [precision.value], "device": device,
                                 "max_seconds": max_seconds, "fail_on": fail_on, "grad_clip": m.grad_clip}
    if experiments is not None:
        overrides["experiments"] = {"enabled": experiments}
    resolved = resolve_config(config, overrides, cwd=found.path)
    cfg = dict(resolved.values)
    cfg["lr_override"] = None
    if m.scaler is None:
        cfg["loss_scale"] = "none"
    dev = resolve_device(cfg["device"])
    spec, model_info = bundle_model_file(found, model, trust)
    trace = Trace(model_file=spec.display, config=cfg, device=str(dev), torch_version=torch.__version__,
                  tool_version=__version__, checkpoint=str(found.path))
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
    trace.runs.append(run)
    trace.model = model_info()
    findings = diagnose(trace)
    if cfg["experiments"]["enabled"] and m.state != STATE_AFTER_STEP and not deadline.expired:
        requests = plan_experiments(trace, findings)
        if requests:
            t0 = time.perf_counter()
            budget = min(cfg["experiments"]["max_seconds"], deadline.left())
            try:
                with watchdog(None if cfg["max_seconds"] is None else deadline.left()):
                    trace.experiments = run_experiments(requests, spec, cfg, dev, budget, start_step=m.step,
                                                        initial_state=initial_state,
                                                        lr_of=lambda p: run.optimizer.get("lr"))
            except ScanTimeout:
                trace.notes.append("--max-seconds ran out during the confirming experiments; they were stopped")
            trace.experiments_seconds = time.perf_counter() - t0
            findings = diagnose(trace)
    trace.seconds = time.perf_counter() - began
    facts = {"path": str(found.path), "step": m.step, "check": m.check, "what": m.what, "state": m.state,
             "precision": m.precision, "micro_batches": m.micro_batches, "policy": m.policy,
             "rebuild": (m.rebuild or {}).get("kind"), "device": m.device, "versions": m.versions,
             "size_bytes": m.size_bytes, "write_seconds": m.write_seconds, "created": m.created}
    if ranks is not None:
        facts["distributed"] = ranks
    return ReplayReport(trace=trace, causes=findings, config=resolved, fail_on=cfg["fail_on"], bundle=facts,
                        history=[{k: decode_value(v) for k, v in h.items()} for h in m.history])
