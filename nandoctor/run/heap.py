"""The recorded steps without full garbage collections of what existed before them.

A scan process holds millions of long-lived Python objects before its first step (torch,
torch._dynamo and sympy, which `torch.optim` imports, the model). Python's cyclic collector
walks all of them in every full (oldest-generation) collection, and the per-module bookkeeping of
a recorded step (hook calls, small lists, weak references) allocates enough to trigger one
every few steps: on a model of 1000 small modules each full collection cost ~100-150 ms, as much
as a whole training step. `frozen_heap()` moves the objects alive when the steps begin into the
collector's permanent generation (`gc.freeze`) and gives them back afterwards (`gc.unfreeze`), so
collections during the steps walk only the objects the steps made. Nothing is freed later than
it would be: reference counting still frees every object, and the frozen objects are collected
again by the first full collection after the steps.
"""
from __future__ import annotations

import contextlib
import gc
from typing import Iterator


_depth = 0      # frozen_heap() blocks open in this process


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the objects alive now for the duration of the block. A block inside another
    freezes what was made since (the model, the optimizer) and leaves the unfreezing to the
    outermost. A process that froze its own objects already (gc.get_freeze_count() > 0 outside
    any block) is left as it is: unfreezing afterwards would undo its choice."""
    global _depth
    if not gc.isenabled() or (gc.get_freeze_count() and not _depth):
        yield
        return
    gc.freeze()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth:
            gc.unfreeze()
