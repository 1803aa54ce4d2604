"""Facts of a batch before it is used: NaN/Inf counts, ranges, class targets vs classes."""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from ..trace import BatchTensorStats, LabelCheck
from . import stats
from .training_defaults import primary_output


def _named_batch(inputs: Any, targets: Any) -> list[tuple[str, torch.Tensor]]:
    return ([("inputs" + p, t) for p, t in stats.iter_tensors(inputs)]
            + [("targets" + p, t) for p, t in stats.iter_tensors(targets)])


def batch_stats(inputs: Any, targets: Any) -> list[BatchTensorStats]:
    """NaN/Inf counts and ranges of every batch tensor, moved to the host in one transfer.

    One aminmax pass per tensor answers for a finite batch (aminmax propagates NaN and shows
    an Inf as the min or max); only a tensor that holds NaN/Inf pays for exact counts and the
    range of its finite values. Reductions run in the tensor's own dtype."""
    named = _named_batch(inputs, targets)
    if not named:
        return []
    rows = []
    for _, t in named:
        x = t.detach()
        if x.numel() == 0 or x.dtype == torch.bool:
            rows.append(torch.zeros(2, dtype=torch.float64))
            continue
        if x.is_complex():
            x = x.abs()
        rows.append(torch.stack(torch.aminmax(x)).to(torch.float64).cpu())
    ranges = torch.stack(rows).tolist()
    out = []
    for (name, t), (lo, hi) in zip(named, ranges):
        nan = inf = 0
        if not (math.isfinite(lo) and math.isfinite(hi)):
            nan, inf, lo, hi = _nonfinite_counts(t)
        out.append(BatchTensorStats(name=name or "inputs", dtype=str(t.dtype).replace("torch.", ""),
                                    shape=list(t.shape), numel=t.numel(), nan=nan, inf=inf,
                                    max_abs=max(abs(lo), abs(hi)) if t.numel() else None,
                                    min=lo if t.numel() else None, max=hi if t.numel() else None))
    return out


def _nonfinite_counts(t: torch.Tensor) -> tuple[int, int, float, float]:
    """NaN and Inf counts and the range with non-finite elements read as 0 (the slow path)."""
    x = t.detach()
    if x.is_complex():
        x = x.abs()
    finite = torch.isfinite(x)
    low, high = torch.aminmax(torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device)))
    nan, inf, lo, hi = torch.stack([torch.isnan(x).sum().to(torch.float64), torch.isinf(x).sum().to(torch.float64),
                                    low.to(torch.float64), high.to(torch.float64)]).tolist()
    return int(nan), int(inf), lo, hi


def label_check(outputs: Any, targets: Any) -> Optional[LabelCheck]:
    """Class targets against the logits' class count, before the loss indexes with them."""
    logits = primary_output(outputs)
    if logits is None or not isinstance(targets, torch.Tensor) or targets.is_floating_point() \
            or targets.dtype == torch.bool or logits.dim() < 2 or targets.numel() == 0:
        return None
    if logits.dim() == 2 and targets.dim() == 1 and targets.shape[0] == logits.shape[0]:
        num_classes = logits.shape[1]                      # [N, C] with [N]
    elif targets.shape == logits.shape[:-1]:
        num_classes = logits.shape[-1]                     # [B, T, C] with [B, T]
    elif targets.shape == logits.shape[:1] + logits.shape[2:]:
        num_classes = logits.shape[1]                      # [B, C, H, W] with [B, H, W]
    else:
        return None
    t = targets.detach()
    valid = t != -100                                      # cross_entropy's default ignore_index
    kept = torch.where(valid, t, torch.zeros_like(t))
    lo, hi, bad, ignored = torch.stack([kept.amin(), kept.amax(), (valid & ((t < 0) | (t >= num_classes))).sum(),
                                        (~valid).sum()]).tolist()
    return LabelCheck(tensor="targets", num_classes=int(num_classes), min=int(lo), max=int(hi), out_of_range=int(bad),
                      ignored=int(ignored), total=t.numel())


def _to_device(obj: Any, device: torch.device, float_dtype: Optional[torch.dtype]) -> Any:
    if isinstance(obj, torch.Tensor):
        obj = obj.to(device, non_blocking=True)
        return obj.to(float_dtype) if float_dtype is not None and obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: _to_device(v, device, float_dtype) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device, float_dtype) for v in obj) if type(obj) in (list, tuple) \
            else [_to_device(v, device, float_dtype) for v in obj]
    return obj


def _sanitise(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) and obj.is_floating_point():
        return torch.nan_to_num(obj, nan=0.0, posinf=0.0, neginf=0.0)
    if isinstance(obj, dict):
        return {k: _sanitise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_sanitise(v) for v in obj) if type(obj) in (list, tuple) else [_sanitise(v) for v in obj]
    return obj
