"""`watch(snapshot=True)`: a copy of the parameters and optimizer state from before the current
optimizer step, so a NaN born inside optimizer.step() can be bundled (and skipped) exactly.

The buffers are allocated once and refreshed with one fused `_foreach_copy_` per step: the cost
is one extra copy of that memory and one device memcpy per step, which is why it is opt-in.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch


class _Entry:
    """One parameter's saved value and optimizer state (None: it had no state yet)."""

    def __init__(self, param: torch.Tensor):
        self.param = param
        self.value = param.detach().clone()
        self.keys: tuple = ()
        self.state: dict[str, torch.Tensor] = {}
        self.scalars: dict[str, Any] = {}
        self.had_state = False


class Snapshot:
    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self._entries: dict[int, _Entry] = {}
        self.ready = False

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def save(self) -> None:
        targets: list[torch.Tensor] = []
        sources: list[torch.Tensor] = []
        for p in self._params():
            entry = self._entries.get(id(p))
            if entry is None or entry.param is not p or entry.value.shape != p.shape:
                entry = self._entries[id(p)] = _Entry(p)
            else:
                targets.append(entry.value)
                sources.append(p.detach())
            state = self.optimizer.state.get(p)
            entry.had_state = bool(state)
            tensors = {k: v for k, v in (state or {}).items() if isinstance(v, torch.Tensor)}
            entry.scalars = {k: v for k, v in (state or {}).items() if not isinstance(v, torch.Tensor)}
            keys = tuple(sorted(tensors))
            if keys != entry.keys or any(entry.state[k].shape != tensors[k].shape for k in keys):
                entry.state = {k: v.detach().clone() for k, v in tensors.items()}
                entry.keys = keys
            else:
                for k in keys:
                    targets.append(entry.state[k])
                    sources.append(tensors[k].detach())
        if targets:
            with torch.no_grad():
                torch._foreach_copy_(targets, sources)
        self.ready = True

    def restore(self) -> None:
        """Put the saved state back into the live parameters and optimizer state."""
        if not self.ready:
            return
        with torch.no_grad():
            for p in self._params():
                entry = self._entries.get(id(p))
                if entry is None:
                    continue
                p.data.copy_(entry.value)
                if not entry.had_state:
                    self.optimizer.state.pop(p, None)
                    continue
                live = self.optimizer.state.setdefault(p, {})
                for k, v in entry.state.items():
                    if isinstance(live.get(k), torch.Tensor) and live[k].shape == v.shape:
                        live[k].copy_(v)
                    else:
                        live[k] = v.clone()
                live.update(entry.scalars)

    @contextlib.contextmanager
    def restored_view(self):
        """Temporarily swap the saved state in (to write a bundle from it), then swap back."""
        if not self.ready:
            yield
            return
        params = self._params()
        values = [p.detach().clone() for p in params]
        states = {p: {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
                  for p, s in self.optimizer.state.items()}
        self.restore()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(params, values):
                    p.data.copy_(v)
            self.optimizer.state.clear()
            self.optimizer.state.update(states)
