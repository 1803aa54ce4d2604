"""Which samples of a step carry its spike or its NaN: the step's forward run again per sample.

Two parts:
- `LoaderIndices`: the dataset indices of every batch a DataLoader hands out. DataLoader
  iterators ask their sampler for index batches in order (ahead of time with workers, or when a
  trainer prefetches) and deliver the batches in that same order; a batch is matched to its
  indices by the storage of its tensors, else taken as the newest one drawn.
- `blame_samples`: the step's model calls run again with no gradient, one score per sample:
  the user's `sample_loss(model, batch)` (a per-sample loss, reduction='none'), else a model
  output's own `.loss` per microbatch of one sample (Hugging Face style), else the model output's
  largest magnitude per sample. With `gradients=True` (a gradient-norm spike) and a per-sample
  loss, each sample's gradient norm too, by microbatches of one through `torch.autograd.grad`
  (the parameters' `.grad` are not touched).

The re-run restores the RNG and the model's buffers (BatchNorm's running statistics) after
itself: the user's run continues exactly as it would have.

A few samples *dominate* when their scores lie far above the batch's median (more than
`OUTLIER_MADS` median absolute deviations, or non-finite) and carry most of the batch's excess
over the median (`DOMINANT_SHARE`); they are at most a quarter of the batch.
"""
from __future__ import annotations

import collections
import contextlib
import math
import threading
from typing import Any, Callable, Iterator, Optional

import torch

from ..run import stats
from . import bundle_writer

OUTLIER_MADS = 10.0      # a robust z-score of ~6.7 sigma (MAD * 1.4826 = sigma for a normal)
DOMINANT_SHARE = 0.8
MAX_SAMPLES = 256        # microbatches of one sample: a bound on the re-run's cost
_RECENT = 16


class LoaderIndices:
    """Process-wide: the dataset indices of the batches DataLoaders handed out recently."""

    _lock = threading.Lock()
    _users = 0
    _originals: Optional[tuple[Any, Any]] = None
    recent: "collections.deque[tuple[set[int], Optional[list[int]]]]" = collections.deque(maxlen=_RECENT)

    @classmethod
    def install(cls) -> None:
        from torch.utils.data.dataloader import _BaseDataLoaderIter
        with cls._lock:
            cls._users += 1
            if cls._originals is not None:
                return
            next_index, next_batch = _BaseDataLoaderIter._next_index, _BaseDataLoaderIter.__next__
            cls._originals = (next_index, next_batch)

            def patched_next_index(iterator: Any) -> Any:
                index = next_index(iterator)
                pending = iterator.__dict__.setdefault("_nandoctor_blame_indices", collections.deque())
                pending.append(list(index) if isinstance(index, (list, tuple)) else
                               [index] if isinstance(index, int) else None)
                return index

            def patched_next(iterator: Any) -> Any:
                batch = next_batch(iterator)
                pending = iterator.__dict__.get("_nandoctor_blame_indices")
                indices = pending.popleft() if pending else None
                cls.recent.append((_storages(batch), indices))
                return batch
            patched_next_index._nandoctor_blame = patched_next._nandoctor_blame = True
            _BaseDataLoaderIter._next_index = patched_next_index
            _BaseDataLoaderIter.__next__ = patched_next

    @classmethod
    def uninstall(cls) -> None:
        from torch.utils.data.dataloader import _BaseDataLoaderIter
        with cls._lock:
            cls._users = max(0, cls._users - 1)
            if cls._users or cls._originals is None:
                return
            # Put back what was there only where nothing patched over us since (`nandoctor run`
            # patches _next_index too; whoever patched last restores first).
            for name, original in zip(("_next_index", "__next__"), cls._originals):
                if getattr(_BaseDataLoaderIter.__dict__.get(name), "_nandoctor_blame", False):
                    setattr(_BaseDataLoaderIter, name, original)
            cls._originals = None
            cls.recent.clear()

    @classmethod
    def of(cls, batch: Any) -> Optional[list[int]]:
        """The dataset indices of this micro-batch (or of the newest batch drawn); None unknown."""
        if not cls.recent:
            return None
        mine = _storages(batch)
        if mine:
            for storages, indices in reversed(cls.recent):
                if storages & mine:
                    return indices
        return cls.recent[-1][1]


def _storages(batch: Any) -> set[int]:
    found = set()
    for _, t in list(stats.iter_tensors(batch))[:8]:
        try:
            found.add(t.untyped_storage().data_ptr())
        except (RuntimeError, NotImplementedError):
            continue
    found.discard(0)
    return found


def batch_size_of(call: Any) -> Optional[int]:
    sizes = [t.shape[0] for _, t in stats.iter_tensors(call) if t.dim() > 0]
    return max(set(sizes), key=sizes.count) if sizes else None


def rows_of(tree: Any, start: int, stop: int, size: int) -> Any:
    """Rows start:stop of every tensor in `tree` whose first dimension is the batch's."""
    if isinstance(tree, torch.Tensor):
        return tree[start:stop] if tree.dim() > 0 and tree.shape[0] == size else tree
    if isinstance(tree, dict):
        return type(tree)({k: rows_of(v, start, stop, size) for k, v in tree.items()}) if type(tree) is dict \
            else {k: rows_of(v, start, stop, size) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(rows_of(v, start, stop, size) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(rows_of(v, start, stop, size) for v in tree)
    return tree


@contextlib.contextmanager
def _untouched(model: torch.nn.Module) -> Iterator[None]:
    rng = bundle_writer.capture_rng()
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for live, saved in buffers:
                live.copy_(saved)
        bundle_writer.restore_rng(rng)


def _call(model: torch.nn.Module, call: dict[str, Any]) -> Any:
    return model(*call.get("args", []), **call.get("kwargs", {}))


def _output_loss(output: Any) -> Optional[torch.Tensor]:
    loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
    return loss if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None


def _row_magnitude(output: Any, size: int) -> Optional[torch.Tensor]:
    rows = [t.detach().float().reshape(size, -1) for _, t in stats.iter_tensors(output)
            if t.is_floating_point() and t.dim() > 0 and t.shape[0] == size and t.numel()]
    if not rows:
        return None
    values = torch.cat(rows, dim=1)
    magnitude = values.abs().amax(dim=1)
    return torch.where(torch.isfinite(values).all(dim=1), magnitude, torch.full_like(magnitude, math.inf))


def _scores(model: torch.nn.Module, call: dict[str, Any], batch: Any, size: int,
            sample_loss: Optional[Callable[..., torch.Tensor]], gradients: bool,
            params: list[torch.Tensor]) -> tuple[str, list[float], Optional[list[float]]]:
    grad_norms: Optional[list[float]] = None
    if sample_loss is not None:
        with torch.no_grad():
            losses = sample_loss(model, batch).detach().float().reshape(size, -1).mean(dim=1)
        if gradients:
            grad_norms = [_grad_norm(sample_loss(model, rows_of(batch, i, i + 1, size)).sum(), params)
                          for i in range(size)]
        return "loss", [float(v) for v in losses], grad_norms
    with torch.no_grad():
        output = _call(model, call)
    if _output_loss(output) is not None:
        losses, norms = [], []
        for i in range(size):
            one = rows_of(call, i, i + 1, size)
            if gradients:
                loss = _output_loss(_call(model, one))
                losses.append(float(loss.detach()))
                norms.append(_grad_norm(loss, params))
            else:
                with torch.no_grad():
                    losses.append(float(_output_loss(_call(model, one)).float()))
        return "loss", losses, norms if gradients else None
    magnitude = _row_magnitude(output, size)
    if magnitude is None:
        return "none", [], None
    return "output_max_abs", magnitude.tolist(), None


def _grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    if not loss.requires_grad:
        return math.nan
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    present = [g.detach() for g in grads if g is not None]
    return float(stats.foreach_norms(present).double().square().sum().sqrt()) if present else 0.0


def blame_samples(model: torch.nn.Module, calls: list[dict[str, Any]], batches: list[Any],
                  indices: list[Optional[list[int]]], sample_loss: Optional[Callable[..., torch.Tensor]] = None,
                  gradients: bool = False, params: Optional[list[torch.Tensor]] = None) -> Optional[dict[str, Any]]:
    """Per-sample scores of a step's micro-batches and the samples that dominate them (a plain
    dict: statistic, method, samples [{micro_batch, row, index, score, grad_norm}], median, mad,
    dominant [...], share); None when no micro-batch can be split into samples."""
    samples: list[dict[str, Any]] = []
    statistic = "none"
    method = "sample_loss" if sample_loss is not None else None
    params = [p for p in (params or []) if p.requires_grad]
    count = max(len(calls), len(batches) if sample_loss is not None else 0)
    with _untouched(model):
        for micro in range(count):
            call = calls[micro] if micro < len(calls) else {}
            batch = batches[micro] if micro < len(batches) else call
            size = batch_size_of(batch if sample_loss is not None else call)
            if not size or size > MAX_SAMPLES:
                continue
            try:
                kind, scores, norms = _scores(model, call, batch, size, sample_loss, gradients, params)
            except Exception:  # noqa: BLE001 - a loss that cannot be taken per sample: the output's own
                try:
                    kind, scores, norms = _scores(model, call, call, batch_size_of(call) or 0, None, gradients, params)
                    method = None
                except Exception:  # noqa: BLE001 - a model that cannot run one sample at a time is not blamed
                    continue
            if kind == "none":
                continue
            statistic = kind
            method = method or ("per-sample output loss" if kind == "loss" else "per-sample output magnitude")
            if sample_loss is not None and getattr(sample_loss, "method", None):
                method = sample_loss.method
            known = indices[micro] if micro < len(indices) else None
            for row, score in enumerate(scores):
                entry = {"micro_batch": micro, "row": row,
                         "index": known[row] if known is not None and row < len(known) else None,
                         "score": score}
                if norms is not None:
                    entry["grad_norm"] = norms[row]
                samples.append(entry)
    if not samples:
        return None
    key = "grad_norm" if gradients and all("grad_norm" in s for s in samples) else "score"
    dominant, median, mad, share = dominant_samples([s[key] for s in samples])
    return {"statistic": statistic if key == "score" else "grad_norm", "method": method, "samples": samples,
            "median": median, "mad": mad, "dominant": [samples[i] for i in dominant], "share": share}


def dominant_samples(scores: list[float]) -> tuple[list[int], float, float, float]:
    """(positions of the dominating samples, median, MAD, their share of the excess over the median)."""
    finite = sorted(v for v in scores if math.isfinite(v))
    if not finite:
        return list(range(len(scores))) if len(scores) <= 1 else [], math.nan, math.nan, math.nan
    median = finite[len(finite) // 2] if len(finite) % 2 else 0.5 * (finite[len(finite) // 2 - 1] + finite[len(finite) // 2])
    deviations = sorted(abs(v - median) for v in finite)
    mad = deviations[len(deviations) // 2]
    floor = max(mad, 1e-6 * max(abs(median), 1e-12))
    outliers = [i for i, v in enumerate(scores) if not math.isfinite(v) or v - median > OUTLIER_MADS * floor]
    if not outliers or len(outliers) > max(1, len(scores) // 4):
        return [], median, mad, 0.0
    if any(not math.isfinite(scores[i]) for i in outliers):
        return outliers, median, mad, 1.0
    excess = sum(max(0.0, v - median) for v in scores)
    share = sum(scores[i] - median for i in outliers) / excess if excess > 0 else 0.0
    return (outliers if share >= DOMINANT_SHARE else []), median, mad, share
