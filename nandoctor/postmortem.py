"""`nandoctor.postmortem(PATH)`: examine a crashed checkpoint without trusting it.

load (read_checkpoint, lazily) -> inspect (one tensor at a time -> plain records) ->
diagnose (postmortem_rules) -> the report document (same schema_version, verdict, exit codes).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from . import __version__
from .diagnose import Finding, rank, verdict as verdict_of
from .document import exit_code_for, finding_dict
from .load.checkpoint import Checkpoint, iter_optimizer_tensors, read_checkpoint
from .load.dcp_shards import nonfinite_shards
from .trace import SCHEMA_VERSION, to_plain


@dataclass
class TensorRecord:
    name: str
    module: str
    shape: list[int]
    dtype: str
    numel: int
    nan: int = 0
    inf: int = 0
    max_abs: Optional[float] = None      # over finite values
    norm: Optional[float] = None         # over finite values
    negatives: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)   # DCP: the shards holding NaN/Inf (rank, offsets)


@dataclass
class OptimizerRecord:
    param: str
    key: str
    shape: list[int]
    nan: int = 0
    inf: int = 0
    negatives: int = 0
    max_abs: Optional[float] = None


@dataclass
class PostmortemTrace:
    path: str
    format: str
    step: Optional[int] = None
    epoch: Optional[int] = None
    tensors: list[TensorRecord] = field(default_factory=list)
    optimizer: list[OptimizerRecord] = field(default_factory=list)
    param_groups: list[dict[str, Any]] = field(default_factory=list)
    state_steps: list[float] = field(default_factory=list)
    scaler: Optional[dict[str, Any]] = None
    baseline: Optional[str] = None
    changes: list[dict[str, Any]] = field(default_factory=list)   # relative change vs baseline, largest first
    seconds: float = 0.0


def tensor_facts(t: torch.Tensor) -> dict[str, Any]:
    """NaN/Inf counts and finite max/norm, reduced in the tensor's own dtype (no whole-file copies)."""
    if not (t.is_floating_point() or t.is_complex()):
        return {"max_abs": float(t.abs().max()) if t.numel() and t.dtype != torch.bool else None,
                "norm": None, "nan": 0, "inf": 0, "negatives": int((t < 0).sum()) if t.numel() and t.dtype != torch.bool else 0}
    if t.is_complex():
        t = t.abs()
    nan = int(torch.isnan(t).sum())
    inf = int(torch.isinf(t).sum())
    finite = t if not (nan or inf) else t[torch.isfinite(t)]
    if finite.numel() == 0:
        return {"nan": nan, "inf": inf, "max_abs": None, "norm": None, "negatives": int((t < 0).sum())}
    return {"nan": nan, "inf": inf, "max_abs": float(finite.abs().max()),
            "norm": float(torch.linalg.vector_norm(finite, dtype=torch.float64)),
            "negatives": int((finite < 0).sum())}


def inspect(ckpt: Checkpoint, baseline: Optional[Checkpoint] = None) -> PostmortemTrace:
    began = time.perf_counter()
    trace = PostmortemTrace(path=str(ckpt.path), format=ckpt.format, step=ckpt.step, epoch=ckpt.epoch,
                            scaler=to_plain(ckpt.scaler) if ckpt.scaler else None)
    base = {t.name: t for t in baseline.tensors} if baseline else {}
    for lazy in ckpt.tensors:
        t = lazy.load()
        facts = tensor_facts(t)
        trace.tensors.append(TensorRecord(name=lazy.name, module=lazy.name.rpartition(".")[0], shape=list(t.shape),
                                          dtype=str(t.dtype).replace("torch.", ""), numel=t.numel(), **facts,
                                          shards=nonfinite_shards(t, lazy.shards) if facts["nan"] or facts["inf"] else []))
        if lazy.name in base and t.is_floating_point():
            old = base[lazy.name].load()
            if old.shape == t.shape:
                diff = torch.linalg.vector_norm((t.to(torch.float64) - old.to(torch.float64)))
                ref = torch.linalg.vector_norm(old, dtype=torch.float64)
                trace.changes.append({"name": lazy.name, "relative_change": float(diff / ref) if ref > 0 else float(diff),
                                      "norm_before": float(ref), "norm_after": facts["norm"]})
        del t
    trace.changes.sort(key=lambda c: -c["relative_change"] if math.isfinite(c["relative_change"]) else -math.inf)
    trace.changes = trace.changes[:20]
    if baseline is not None:
        trace.baseline = str(baseline.path)
    for param, key, value in iter_optimizer_tensors(ckpt):
        if key == "step":
            if value.numel() == 1:
                trace.state_steps.append(float(value))
            continue
        facts = tensor_facts(value)
        trace.optimizer.append(OptimizerRecord(param=param, key=key, shape=list(value.shape), nan=facts["nan"],
                                               inf=facts["inf"], negatives=facts["negatives"], max_abs=facts["max_abs"]))
    for opt in ckpt.optimizer:
        for state in opt.get("state", {}).values():
            step = state.get("step")
            if isinstance(step, (int, float)):
                trace.state_steps.append(float(step))
        for group in opt.get("param_groups", []):
            trace.param_groups.append({k: (float(v) if isinstance(v, (int, float, torch.Tensor)) and not isinstance(v, bool)
                                           and (not isinstance(v, torch.Tensor) or v.numel() == 1) else v)
                                       for k, v in group.items() if k != "params"})
    trace.seconds = time.perf_counter() - began
    return trace


@dataclass
class PostmortemReport:
    trace: PostmortemTrace
    causes: list[Finding]
    fail_on: str = "error"

    @property
    def verdict(self) -> str:
        return verdict_of(self.causes)

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.causes, self.fail_on)

    def to_dict(self) -> dict[str, Any]:
        worst = sorted(self.trace.tensors, key=lambda t: (-(t.nan + t.inf), -(t.max_abs or 0.0)))
        doc = {
            "schema_version": SCHEMA_VERSION, "tool": {"name": "nandoctor", "version": __version__},
            "command": "postmortem", "model_file": None, "checkpoint": self.trace.path,
            "verdict": self.verdict, "fail_on": self.fail_on, "exit_code": self.exit_code,
            "first_nonfinite": None, "causes": [finding_dict(f) for f in self.causes],
            "runs": [], "layers": {}, "experiments": [], "experiments_seconds": 0.0,
            "format": self.trace.format, "step": self.trace.step, "epoch": self.trace.epoch,
            "tensors": [to_plain(t) for t in worst],
            "modules": _by_module(self.trace.tensors),
            "optimizer_state": {"tensors": [to_plain(o) for o in self.trace.optimizer
                                            if o.nan or o.inf or (o.key == "exp_avg_sq" and o.negatives)],
                                "param_groups": self.trace.param_groups,
                                "steps": sorted(set(self.trace.state_steps))} if (self.trace.optimizer or self.trace.param_groups) else None,
            "scaler": self.trace.scaler,
            "baseline": {"path": self.trace.baseline, "changes": self.trace.changes} if self.trace.baseline else None,
            "environment": {"torch": torch.__version__, "device": "cpu"}, "config": {}, "notes": [],
            "seconds": round(self.trace.seconds, 3),
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


def postmortem(path: str | Path, baseline: str | Path | None = None, *, trust: bool = False,
               fail_on: str = "error") -> PostmortemReport:
    """Examine checkpoint `path` (and optionally an earlier `baseline`) and diagnose what is broken."""
    from .postmortem_rules import diagnose_checkpoint
    ckpt = read_checkpoint(path, trust)
    base = read_checkpoint(baseline, trust) if baseline is not None else None
    trace = inspect(ckpt, base)
    return PostmortemReport(trace=trace, causes=rank(diagnose_checkpoint(trace)), fail_on=fail_on)
