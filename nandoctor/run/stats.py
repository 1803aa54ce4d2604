"""On-device reductions of tensors. The only place where tensor statistics are computed.

Every function returns device tensors and never calls .item(): the recorder stacks the rows
of a whole step and moves them to the host in one transfer, so recording adds no host
synchronisation per module or per op.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Iterator, Optional

import torch

# Columns of an activation/gradient row.
ROW = ("max_abs", "norm", "nan", "inf", "zeros")
ROW_WIDTH = len(ROW)


def iter_tensors(obj: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (path, tensor) for every tensor inside tuples, lists, dicts, dataclasses and
    Hugging Face ModelOutputs (which are both dicts and dataclasses)."""
    if depth > 6:
        return
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from iter_tensors(value, f"{prefix}[{key!r}]", depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from iter_tensors(value, f"{prefix}[{i}]", depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from iter_tensors(getattr(obj, f.name), f"{prefix}.{f.name}", depth + 1)


def floating_tensors(obj: Any) -> list[torch.Tensor]:
    return [t for _, t in iter_tensors(obj) if (t.is_floating_point() or t.is_complex()) and t.numel() > 0]


def tensor_row(x: torch.Tensor) -> torch.Tensor:
    """[max|x|, ||x||_2, #NaN, #Inf, #zeros] as a float32 device tensor.

    max|x| is NaN when x holds a NaN (vector_norm propagates it), which the host side uses as
    the cheap "has NaN" flag; the counts make it exact.
    """
    x = x.detach()
    if x.is_complex():
        x = x.abs()
    return torch.stack([
        torch.linalg.vector_norm(x, math.inf, dtype=torch.float32),
        torch.linalg.vector_norm(x, 2, dtype=torch.float32),
        torch.isnan(x).sum().to(torch.float32),
        torch.isinf(x).sum().to(torch.float32),
        (x == 0).sum().to(torch.float32),
    ])


def combined_row(tensors: list[torch.Tensor]) -> Optional[torch.Tensor]:
    """One row for a module whose output is several tensors: max of maxima, norm of norms, summed counts."""
    if not tensors:
        return None
    if len(tensors) == 1:
        return tensor_row(tensors[0])
    rows = torch.stack([tensor_row(t).to(tensors[0].device) for t in tensors])
    return torch.cat([rows[:, 0].amax().reshape(1), rows[:, 1].square().sum().sqrt().reshape(1),
                      rows[:, 2:].sum(0)])


def foreach_norms(tensors: list[torch.Tensor], ord: float = 2.0) -> torch.Tensor:
    """Per-tensor norms in one fused call, as a float32 vector (empty list -> empty vector)."""
    if not tensors:
        return torch.zeros(0)
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    if len(by_device) == 1:
        norms = torch._foreach_norm(tensors, ord, dtype=torch.float32)
        return torch.stack(list(norms))
    out = torch.zeros(len(tensors), dtype=torch.float32, device=tensors[0].device)
    for device, idx in by_device.items():
        norms = torch._foreach_norm([tensors[i] for i in idx], ord, dtype=torch.float32)
        out[idx] = torch.stack(list(norms)).to(out.device)
    return out


def segment_counts(tensors: list[torch.Tensor], predicate: str) -> torch.Tensor:
    """Per-tensor count of elements that are zero ("zero") or non-finite ("nonfinite"),
    computed over one concatenation so the number of kernels does not grow with the list."""
    if not tensors:
        return torch.zeros(0)
    device = tensors[0].device
    flat = torch.cat([t.detach().reshape(-1).to(device) for t in tensors])
    mask = (flat == 0) if predicate == "zero" else ~torch.isfinite(flat)
    cumulative = torch.cumsum(mask.to(torch.float32 if flat.numel() < 2**24 else torch.float64), 0)
    ends = torch.tensor([t.numel() for t in tensors], device=device).cumsum(0) - 1
    at_end = cumulative[ends]
    before = torch.cat([torch.zeros(1, device=device, dtype=at_end.dtype), at_end[:-1]])
    return (at_end - before).to(torch.float32)


def summarise_values(t: torch.Tensor) -> dict[str, Any]:
    """Domain facts of one tensor for the failing op (replay only: syncs freely)."""
    x = t.detach()
    if x.is_complex():
        x = x.abs()
    info: dict[str, Any] = {"shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", "")}
    if x.numel() == 0:
        return info
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        return info
    xf = x.to(torch.float64)
    finite = xf[torch.isfinite(xf)]
    info.update(
        nan=int(torch.isnan(xf).sum()), inf=int(torch.isinf(xf).sum()),
        zeros=int((xf == 0).sum()), negatives=int((xf < 0).sum()),
    )
    if finite.numel():
        info.update(min=float(finite.min()), max=float(finite.max()), min_abs=float(finite.abs().min()))
    return info
