"""Inspect a checkpoint one tensor at a time into a PostmortemTrace (plain records).

The checkpoint was read without executing anything (load/checkpoint.py); here each tensor is
reduced to NaN/Inf counts, finite max and norm, so no whole-file copy is ever held.
"""
from __future__ import annotations

import math
import time
from typing import Any, Optional

import torch

from ...load.checkpoint import Checkpoint, iter_optimizer_tensors
from ...load.dcp_shards import nonfinite_shards
from ...trace import OptimizerRecord, PostmortemTrace, TensorRecord, to_plain


def tensor_facts(t: torch.Tensor) -> dict[str, Any]:
    """NaN/Inf counts and finite max/norm, reduced in the tensor's own dtype (no whole-file copies)."""
    if not (t.is_floating_point() or t.is_complex()):
        return {"max_abs": float(t.abs().max()) if t.numel() and t.dtype != torch.bool else None,
                "norm": None, "nan": 0, "inf": 0, "negatives": int((t < 0).sum()) if t.numel() and t.dtype != torch.bool else 0}
    if t.is_complex():
        t = t.abs()
    if t.element_size() == 1:      # float8 variants: isnan/abs have no kernels for them; widen (1 byte each)
        t = t.to(torch.float16 if t.dtype != getattr(torch, "float8_e8m0fnu", None) else torch.float32)
    nan = int(torch.isnan(t).sum())
    inf = int(torch.isinf(t).sum())
    finite = t if not (nan or inf) else t[torch.isfinite(t)]
    if finite.numel() == 0:
        return {"nan": nan, "inf": inf, "max_abs": None, "norm": None, "negatives": int((t < 0).sum())}
    return {"nan": nan, "inf": inf, "max_abs": float(finite.abs().max()),
            "norm": float(torch.linalg.vector_norm(finite, dtype=torch.float64)),
            "negatives": int((finite < 0).sum())}


def _plain_state(value: Any) -> Any:
    """Optimizer/scaler settings as JSON-ready values: one-element tensors become numbers, larger
    tensors a short description, anything else not plain its type name."""
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return value.item() if not value.is_complex() else str(value.item())
        return f"tensor {list(value.shape)} {str(value.dtype).replace('torch.', '')}"
    if isinstance(value, bool) or value is None or isinstance(value, (int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_state(v) for v in value]
    return type(value).__name__


def inspect(ckpt: Checkpoint, baseline: Optional[Checkpoint] = None) -> PostmortemTrace:
    began = time.perf_counter()
    trace = PostmortemTrace(path=str(ckpt.path), format=ckpt.format, step=ckpt.step, epoch=ckpt.epoch,
                            scaler=to_plain(_plain_state(ckpt.scaler)) if ckpt.scaler else None)
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
            trace.param_groups.append({str(k): _plain_state(v) for k, v in group.items() if k != "params"})
    trace.seconds = time.perf_counter() - began
    return trace
