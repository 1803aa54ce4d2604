"""Which line of the user's code last wrote each parameter while build_model() ran (and each
batch tensor while get_batch() ran).

That is the layer's constructor call (its reset_parameters) or the user's own init
(`nn.init.normal_(layer.weight, std=5)`), so init and layer findings can point at user code.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch.overrides import TorchFunctionMode

from ..trace import SourceLocation
from .frames import stack_locations


class InitSites(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.sites: dict[int, SourceLocation] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        target = args[0] if name.endswith("_") and args else out
        # Indexed assignment (`labels[:] = -100`, `w[0, 0] = nan`) and augmented assignment
        # (`x += 1`) write into their first argument: that line is the tensor's last writer.
        writes = (name == "__setitem__" and not _selects_nothing(args[1] if len(args) > 1 else None)) \
            or (name.startswith("__i") and name.endswith("__") and name != "__init__")
        if isinstance(target, torch.Tensor) and (writes or not name.startswith("__")):
            _, user = stack_locations()
            if user is not None:
                # Keyed by storage: nn.Parameter(t) and t share it, and the last writer wins.
                self.sites[_key(target)] = user
        return out

    def for_model(self, model: torch.nn.Module) -> dict[str, SourceLocation]:
        return {name: self.sites[_key(p)] for name, p in model.named_parameters() if _key(p) in self.sites}


def _selects_nothing(index) -> bool:
    """An index that selects no element (`labels[mask] = x` with an all-False mask) writes nothing."""
    if isinstance(index, torch.Tensor):
        return index.numel() == 0 or (index.dtype == torch.bool and not bool(index.any()))
    return False


def _key(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size()
    except (RuntimeError, NotImplementedError):
        return id(t)


def record_tensor_sites(fn: Any, *args: Any) -> tuple[Any, "InitSites"]:
    """Call fn(*args) and remember which user line made each tensor it creates."""
    sites = InitSites()
    with sites:
        out = fn(*args)
    return out, sites


def site_for(sites: "InitSites", t: torch.Tensor) -> Optional[SourceLocation]:
    return sites.sites.get(_key(t))


def record_init_sites(build: Any) -> tuple[Any, dict[str, SourceLocation]]:
    """Call build(); return the model and {parameter name: user line that last wrote it}."""
    sites = InitSites()
    with sites:
        model = build()
    return model, (sites.for_model(model) if isinstance(model, torch.nn.Module) else {})
