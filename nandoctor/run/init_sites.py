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
from .frames import location, user_frame


class InitSites(TorchFunctionMode):
    """Every torch call's user line, by the storage it wrote. A model of a thousand modules makes
    thousands of calls while it is built: each keeps only its (file, line, function), and a
    SourceLocation is made for the parameters and batch tensors asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: dict[int, tuple[str, int, str]] = {}
        self._made: dict[tuple[str, int, str], SourceLocation] = {}

    def site(self, key: int) -> Optional[SourceLocation]:
        frame = self.raw.get(key)
        if frame is None:
            return None
        if frame not in self._made:
            self._made[frame] = location(*frame)
        return self._made[frame]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        target = args[0] if name.endswith("_") and args else out
        # Indexed assignment (`labels[:] = -100`, `w[0, 0] = nan`) and augmented assignment
        # (`x += 1`) write into their first argument: that line is the tensor's last writer.
        writes = (name == "__setitem__" and not _selects_nothing(args[1] if len(args) > 1 else None)) \
            or (name.startswith("__i") and name.endswith("__") and name != "__init__")
        if isinstance(target, torch.Tensor) and (writes or not name.startswith("__")):
            user = user_frame()
            if user is not None:
                # Keyed by storage: nn.Parameter(t) and t share it, and the last writer wins.
                self.raw[_key(target)] = user
        return out

    def for_model(self, model: torch.nn.Module) -> dict[str, SourceLocation]:
        out = {}
        for name, p in model.named_parameters():
            site = self.site(_key(p))
            if site is not None:
                out[name] = site
        return out


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
    return sites.site(_key(t))


def record_init_sites(build: Any) -> tuple[Any, dict[str, SourceLocation]]:
    """Call build(); return the model and {parameter name: user line that last wrote it}."""
    sites = InitSites()
    with sites:
        model = build()
    return model, (sites.for_model(model) if isinstance(model, torch.nn.Module) else {})
