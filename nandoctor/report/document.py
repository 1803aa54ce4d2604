"""The report document: trace + findings -> the stable, documented JSON structure (schema v1).

Every reporter (console, JSON, Markdown, GitHub, JUnit, SARIF, HTML) renders this document
and nothing else; the per-layer summaries (maxima over steps, headroom) are made here.
"""
from __future__ import annotations

import math
import platform
from typing import Any, Optional

from .._version import __version__
from ..diagnose import Finding
from ..diagnose.verdict import checkpoint_failed, exit_code_for, scan_failed, verdict as verdict_of
from ..trace import (SCHEMA_VERSION, NonfiniteEvent, PostmortemTrace, RunTrace, SourceLocation, TensorRecord, Trace,
                     to_plain)
from ..trace.vocab import FP16_MAX, compute_max


def _finite(values: list[Optional[float]]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _max(values: list[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    if not present:
        return None
    if any(math.isnan(v) for v in present):
        return math.nan
    return max(present)


def _sum(values: list[Optional[float]]) -> int:
    return int(sum(v for v in values if v is not None and math.isfinite(v)))


def first_nonfinite(trace: Trace) -> Optional[NonfiniteEvent]:
    """The earliest origin across runs (by step, then by the configured precision order)."""
    events = [r.first_nonfinite for r in trace.runs if r.first_nonfinite is not None]
    return min(events, key=lambda e: e.step) if events else None


def event_dict(event: Optional[NonfiniteEvent]) -> Optional[dict[str, Any]]:
    if event is None:
        return None
    data = to_plain(event)
    data["source"] = str(event.source) if event.source else None
    data["source_code"] = event.source.code if event.source else None
    data["user_source"] = str(event.user_source) if event.user_source else None
    data["user_source_code"] = event.user_source.code if event.user_source else None
    if event.producer is not None:
        data["producer"]["source"] = str(event.producer.source) if event.producer.source else None
    return data


def finding_dict(f: Finding) -> dict[str, Any]:
    return {"id": f.id, "severity": f.severity, "confidence": round(f.confidence, 3), "title": f.title,
            "evidence": list(f.evidence), "fix": f.fix, "module": f.module,
            "source": str(f.source) if f.source else None,
            "file": f.source.file if f.source else None, "line": f.source.line if f.source else None,
            "precisions": list(f.precisions), "experiments": list(f.experiments), "confirmed": f.confirmed,
            "explains_origin": f.explains_origin, "rank_reason": f.rank_reason, "mechanism": f.mechanism}


def causes_list(findings: list[Finding]) -> list[dict[str, Any]]:
    """The root causes in rank order, each with the findings that are its consequences nested
    as `symptoms` (one entry, one annotation, per root cause)."""
    roots = [f for f in findings if f.symptom_of is None]
    causes = [finding_dict(f) for f in roots]
    for cause in causes:
        cause["symptoms"] = []
    for symptom in (f for f in findings if f.symptom_of is not None):
        home = next((c for c in causes if c["id"] == symptom.symptom_of), None)
        if home is None:            # no root with that id (never after `rank`): keep it visible
            causes.append({**finding_dict(symptom), "symptoms": []})
        else:
            home["symptoms"].append(finding_dict(symptom))
    return causes


def run_dict(run: RunTrace) -> dict[str, Any]:
    losses = [s.loss for s in run.steps]
    finite_losses = _finite(losses)
    scales = [s.loss_scale for s in run.steps]
    # Present only when a watch policy acted (`nandoctor run --on-nonfinite/--on-spike`).
    kept_alive = {key: [to_plain(v) for v in values] for key, values in
                  (("interventions", run.interventions), ("sample_blame", run.sample_blame)) if values}
    # Present only in a replay that compared its execution paths with the recorded run's.
    if run.replay_paths is not None:
        kept_alive["replay_paths"] = to_plain(run.replay_paths)
    # Present only when the traced step did not end normally (its diagnosis is what was traced).
    if run.unfinished_step is not None:
        kept_alive["unfinished_step"] = to_plain(run.unfinished_step)
    return {
        "precision": run.precision, "status": run.status, "steps_requested": run.steps_requested,
        "steps_run": run.steps_run, "start_step": run.start_step,
        "loss": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None,
                 "min": min(finite_losses) if finite_losses else None,
                 "max": max(finite_losses) if finite_losses else None},
        "losses": losses, "grad_norms": [s.grad_norm for s in run.steps], "lrs": [s.lr for s in run.steps],
        "loss_scales": scales if any(v is not None for v in scales) else [],
        "skipped_steps": [s.step for s in run.steps if s.skipped],
        "first_nonfinite": event_dict(run.first_nonfinite),
        "error": None if run.error is None else {**to_plain(run.error),
                                                  "source": str(run.error.source) if run.error.source else None,
                                                  "user_source": str(run.error.user_source) if run.error.user_source else None},
        "optimizer": run.optimizer, "param_dtype": run.param_dtype, "seconds": round(run.seconds, 3),
        "note": run.note, "compile_replay": compile_replay_dict(run), **kept_alive,
    }


def compile_replay_dict(run: RunTrace) -> Optional[dict[str, Any]]:
    """The ladder of a compiled run's failing step (null when it was not replayed under the compiler)."""
    replay = run.compile_replay
    if replay is None:
        return None
    data = to_plain(replay)
    if replay.culprit is not None:
        data["culprit"]["location"] = str(replay.culprit.location) if replay.culprit.location else None
    return data


def layer_rows(run: RunTrace) -> list[dict[str, Any]]:
    rows = []
    limit = compute_max(run.precision)
    for layer in sorted(run.layers, key=lambda l: l.index):
        s = layer.series
        act_max = _max(s["act_max_abs"])
        grad_max = _max(s["param_grad_norm"])
        rows.append({
            "module": layer.module, "type": layer.type, "source": str(layer.source) if layer.source else None,
            "act_max_abs": act_max, "act_nan_steps": _sum(s["act_nan"]), "act_inf_steps": _sum(s["act_inf"]),
            "act_zero_frac": _max(s["act_zero_frac"]),
            "headroom": (limit / act_max) if act_max and math.isfinite(act_max) else None,
            "fp16_headroom": (FP16_MAX / act_max) if act_max and math.isfinite(act_max) else None,
            "grad_out_norm_max": _max(s["grad_norm"]), "grad_nan_steps": _sum(s["grad_nan"]),
            "grad_inf_steps": _sum(s["grad_inf"]),
            "param_norm": (s["param_norm"][-1] if s["param_norm"] else None),
            "param_grad_norm_max": grad_max, "param_grad_zero_frac": _max(s["param_grad_zero_frac"]),
            "update_ratio_max": _max(s["update_ratio"]),
            "act_max_abs_per_step": s["act_max_abs"], "param_grad_norm_per_step": s["param_grad_norm"],
        })
    return rows


def _header(command: str, findings: list[Finding], fail_on: str, failed: bool) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "tool": {"name": "nandoctor", "version": __version__},
            "command": command, "verdict": verdict_of(findings, failed), "fail_on": fail_on,
            "exit_code": exit_code_for(findings, fail_on, failed)}


def build_document(trace: Trace, findings: list[Finding], fail_on: str = "error", command: str = "scan") -> dict[str, Any]:
    """The scan (or replay) document."""
    header = _header(command, findings, fail_on, scan_failed(trace))
    doc = {
        "schema_version": header["schema_version"], "tool": header["tool"], "command": command,
        "model_file": trace.model_file,
        "checkpoint": trace.checkpoint,
        "verdict": header["verdict"],
        "fail_on": fail_on,
        "exit_code": header["exit_code"],
        "first_nonfinite": event_dict(first_nonfinite(trace)),
        "causes": causes_list(findings),
        "runs": [run_dict(r) for r in trace.runs],
        "layers": {r.precision: layer_rows(r) for r in trace.runs if r.layers},
        "experiments": [to_plain(e) for e in trace.experiments],
        "experiments_seconds": round(trace.experiments_seconds, 3),
        "model": to_plain(trace.model),
        "environment": {"torch": trace.torch_version, "device": trace.device, "python": platform.python_version(),
                        **({"threads": trace.threads} if trace.threads else {})},
        "config": trace.config,
        "notes": list(trace.notes),
        "seconds": round(trace.seconds, 3),
    }
    warned = [{"precision": r.precision, **to_plain(w)} for r in trace.runs for w in r.early_warnings]
    if warned:
        doc["early_warnings"] = warned
    if trace.loop is not None:
        loop = to_plain(trace.loop)
        for key, value in vars(trace.loop).items():
            if isinstance(value, SourceLocation):
                loop[key] = str(value)
        doc["loop"] = loop
    return to_plain(doc)


def build_postmortem_document(trace: PostmortemTrace, findings: list[Finding], fail_on: str = "error") -> dict[str, Any]:
    """The postmortem document: same header and causes as a scan, plus what the checkpoint holds."""
    header = _header("postmortem", findings, fail_on, checkpoint_failed(trace))
    worst = sorted(trace.tensors, key=lambda t: (-(t.nan + t.inf), -(t.max_abs or 0.0)))
    doc = {
        **header, "model_file": None, "checkpoint": trace.path,
        "first_nonfinite": None, "causes": causes_list(findings),
        "runs": [], "layers": {}, "experiments": [], "experiments_seconds": 0.0,
        "format": trace.format, "step": trace.step, "epoch": trace.epoch,
        "tensors": [to_plain(t) for t in worst],
        "modules": _by_module(trace.tensors),
        "optimizer_state": {"tensors": [to_plain(o) for o in trace.optimizer
                                        if o.nan or o.inf or (o.key == "exp_avg_sq" and o.negatives)],
                            "param_groups": trace.param_groups,
                            "steps": sorted(set(trace.state_steps))} if (trace.optimizer or trace.param_groups) else None,
        "scaler": trace.scaler,
        "baseline": {"path": trace.baseline, "changes": trace.changes} if trace.baseline else None,
        "environment": {"torch": trace.torch_version, "device": "cpu", "python": platform.python_version()},
        "config": {}, "notes": [],
        "seconds": round(trace.seconds, 3),
    }
    return to_plain(doc)


def _by_module(tensors: list[TensorRecord]) -> list[dict[str, Any]]:
    modules: dict[str, dict[str, Any]] = {}
    for t in tensors:
        m = modules.setdefault(t.module, {"module": t.module, "tensors": 0, "nan": 0, "inf": 0, "max_abs": 0.0})
        m["tensors"] += 1
        m["nan"] += t.nan
        m["inf"] += t.inf
        m["max_abs"] = max(m["max_abs"], t.max_abs or 0.0)
    return sorted(modules.values(), key=lambda m: (-(m["nan"] + m["inf"]), -m["max_abs"]))
