"""What the watch does when a step goes non-finite or spikes: the policies that keep a run alive.

- `warn`: report, let the step update the weights.
- `skip`: the step makes no update on any rank. Its gradients are dropped before the optimizer
  reads them (torch optimizers leave a parameter with no `.grad` alone: no moment, no step
  counter moves); a scheduler the watch knows and a GradScaler are held where they were for
  that step (`StepFreeze`), so the next step runs with the same lr, the same loss scale.
- `rollback`: every `every` steps a copy of the weights, buffers, optimizer state, param-group
  hyper-parameters, scheduler and scaler is kept (on the CPU, or on disk), `keep` of them at
  most (the footprint: `keep` x the training state). On a firing the newest copy at least `back`
  steps old is put back; the batches drawn since then are not trained on again (the loop's
  iterator moves on: the window is skipped); a second failure before the run got past the
  failing step goes back one copy further. After `budget` rollbacks the run stops with a report.

Under torchrun every decision is taken from the exchanged flags (the same on every rank), copies
are taken at the same steps, and the samples of every rank are gathered into one skip list entry
written by rank 0.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..run import stats
from .distributed import local_tensor
from .flags import SLOT

NONFINITE_POLICIES = ("raise", "stop", "skip", "warn", "rollback")
SPIKE_POLICIES = ("warn", "skip", "rollback")
ROLLBACK_KEYS = ("every", "keep", "budget", "back", "to")


@dataclass
class RollbackSettings:
    every: int = 50           # steps between copies
    keep: int = 2             # copies kept at most
    budget: int = 3           # rollbacks before the run stops
    back: int = 0             # a copy at least this many steps before the failing step
    to: str = "cpu"           # "cpu" or "disk" (the watch's output folder, rollback/)

    @classmethod
    def of(cls, value: Any) -> "RollbackSettings":
        if value is None:
            return cls()
        if isinstance(value, RollbackSettings):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"rollback must be a dict with keys {', '.join(ROLLBACK_KEYS)}, got {value!r}")
        unknown = sorted(set(value) - set(ROLLBACK_KEYS))
        if unknown:
            raise ValueError(f"rollback: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(ROLLBACK_KEYS)}")
        settings = cls(**{k: value[k] for k in ROLLBACK_KEYS if k in value})
        if int(settings.every) < 1 or int(settings.keep) < 1 or int(settings.budget) < 0 or int(settings.back) < 0:
            raise ValueError(f"rollback: every and keep must be >= 1, budget and back >= 0, got {value!r}")
        if settings.to not in ("cpu", "disk"):
            raise ValueError(f"rollback: 'to' must be 'cpu' or 'disk', got {settings.to!r}")
        settings.every, settings.keep, settings.budget, settings.back = (int(settings.every), int(settings.keep),
                                                                       int(settings.budget), int(settings.back))
        return settings


@dataclass
class StateCopy:
    """The training state a step starts from (before its update)."""
    step: int
    nbytes: int
    seconds: float
    state: Optional[dict[str, Any]] = None     # in memory (CPU)
    path: Optional[Path] = None                # on disk

    def load(self) -> dict[str, Any]:
        if self.state is not None:
            return self.state
        assert self.path is not None
        return torch.load(self.path, weights_only=False)

    def drop(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _cpu(value: Any) -> Any:
    return local_tensor(value).detach().to("cpu", copy=True) if isinstance(value, torch.Tensor) else copy.deepcopy(value)


def take_copy(step: int, watch: Any, folder: Optional[Path] = None) -> StateCopy:
    """A copy of everything a step's update and its bookkeeping touch (this rank's shards)."""
    began = time.perf_counter()
    params = watch.params()
    optimizer = watch.optimizer
    state: dict[str, Any] = {
        "params": [_cpu(p) for p in params],
        "buffers": [_cpu(b) for b in watch.model.buffers()],
        "optimizer": [{k: _cpu(v) for k, v in optimizer.state.get(p, {}).items()} if optimizer is not None else {}
                      for p in params],
        "groups": [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        if optimizer is not None else [],
        "scheduler": _state_dict(watch.scheduler),
        "scaler": _state_dict(watch.scaler),
    }
    nbytes = sum(t.numel() * t.element_size() for t in stats.state_tensors(state))
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{step:07d}.pt"
        torch.save(state, path)
        return StateCopy(step, nbytes, time.perf_counter() - began, path=path)
    return StateCopy(step, nbytes, time.perf_counter() - began, state=state)


def put_back(copy_: StateCopy, watch: Any) -> None:
    """Restore a copy into the live model, optimizer, scheduler and scaler (in place: DDP and
    FSDP keep their views of the same storage)."""
    state = copy_.load()
    params = watch.params()
    optimizer = watch.optimizer
    with torch.no_grad():
        for p, saved in zip(params, state["params"]):
            local_tensor(p.detach()).copy_(saved)
        for b, saved in zip(watch.model.buffers(), state["buffers"]):
            local_tensor(b).copy_(saved)
        if optimizer is not None:
            for p, saved in zip(params, state["optimizer"]):
                if not saved:
                    optimizer.state.pop(p, None)
                    continue
                live = optimizer.state.setdefault(p, {})
                for key, value in saved.items():
                    current = live.get(key)
                    if isinstance(value, torch.Tensor) and isinstance(current, torch.Tensor) and \
                            local_tensor(current).shape == value.shape:
                        local_tensor(current).copy_(value)
                    elif isinstance(value, torch.Tensor):
                        # Adam keeps its step counter on the CPU unless capturable/fused.
                        live[key] = value.clone() if key == "step" else value.to(local_tensor(p).device)
                    else:
                        live[key] = copy.deepcopy(value)
                for key in set(live) - set(saved):
                    del live[key]
            for group, saved in zip(optimizer.param_groups, state["groups"]):
                for key, value in saved.items():
                    if isinstance(group.get(key), torch.Tensor) and isinstance(value, torch.Tensor):
                        group[key].copy_(value)
                    else:
                        group[key] = copy.deepcopy(value)
    for owner, saved in ((watch.scheduler, state["scheduler"]), (watch.scaler, state["scaler"])):
        if owner is not None and saved is not None:
            owner.load_state_dict(copy.deepcopy(saved))
    for p in params:
        p.grad = None
    watch.weights_replaced()


def _state_dict(owner: Any) -> Any:
    if owner is None or not hasattr(owner, "state_dict"):
        return None
    try:
        return copy.deepcopy(owner.state_dict())
    except Exception:  # noqa: BLE001 - a state that cannot be copied is not restored
        return None



class RollbackKeeper:
    """The rolling copies of a watch: taken every `every` steps, `keep` at most."""

    def __init__(self, settings: RollbackSettings, folder: Optional[Path] = None):
        self.settings = settings
        self.folder = folder if settings.to == "disk" else None
        self.copies: list[StateCopy] = []
        self.used = 0                                  # rollbacks done (against the budget)
        self.last_restored: Optional[int] = None       # the step of the copy last put back
        self.resumed_at: Optional[int] = None          # the step at which that rollback happened
        self.copy_seconds: list[float] = []

    def maybe_take(self, step: int, watch: Any) -> None:
        if step % self.settings.every:
            return
        if self.copies and self.copies[-1].step == step:
            return
        taken = take_copy(step, watch, self.folder)
        self.copy_seconds.append(taken.seconds)
        self.copies.append(taken)
        while len(self.copies) > self.settings.keep:
            self.copies.pop(0).drop()

    @property
    def footprint(self) -> int:
        return sum(c.nbytes for c in self.copies)

    def choose(self, failing_step: int) -> Optional[StateCopy]:
        """The copy to put back: the newest at least `back` steps old; when the run fails again
        before getting past the step of the last rollback, one copy further back."""
        older = [c for c in self.copies if c.step <= failing_step - self.settings.back and c.step < failing_step + 1]
        if (self.last_restored is not None and self.resumed_at is not None and failing_step <= self.resumed_at
                and any(c.step == self.last_restored for c in older)):
            older = [c for c in older if c.step < self.last_restored]
        return older[-1] if older else None

    def restore(self, chosen: StateCopy, watch: Any, failing_step: int) -> None:
        put_back(chosen, watch)
        self.used += 1
        self.last_restored = chosen.step
        self.resumed_at = failing_step if self.resumed_at is None else max(self.resumed_at, failing_step)
        # Copies newer than the one put back describe a trajectory that no longer exists.
        for stale in [c for c in self.copies if c.step > chosen.step]:
            stale.drop()
        self.copies = [c for c in self.copies if c.step <= chosen.step]

    def close(self) -> None:
        for c in self.copies:
            c.drop()
        self.copies = []


class StepFreeze:
    """Holds a scheduler and a GradScaler where they were for one skipped step: the scheduler's
    next `step()` call does nothing, the scaler's `update()` puts its scale and growth tracker
    back. Released at the next step's check."""

    def __init__(self) -> None:
        self.armed = False
        self.step: Optional[int] = None            # the skipped step
        self._scheduler: Any = None
        self._scheduler_step: Any = None

    def arm(self, step: int, scheduler: Any) -> None:
        self.armed = True
        self.step = step
        if scheduler is not None and self._scheduler is None and hasattr(scheduler, "step"):
            self._scheduler = scheduler
            original = scheduler.step
            # Someone else's instance-level wrapper (a framework's) is put back as it was.
            self._scheduler_step = scheduler.__dict__.get("step")
            freeze = self

            def step(*args: Any, **kwargs: Any) -> Any:
                if freeze.armed:
                    freeze._release_scheduler()
                    return None
                return original(*args, **kwargs)
            scheduler.step = step

    def _release_scheduler(self) -> None:
        if self._scheduler is not None:
            if self._scheduler_step is not None:
                self._scheduler.step = self._scheduler_step
            elif "step" in self._scheduler.__dict__:
                del self._scheduler.step
            self._scheduler = None
            self._scheduler_step = None

    def scaler_update(self, scaler: Any, update: Any, args: tuple, kwargs: dict) -> Any:
        if not self.armed:
            return update(*args, **kwargs)
        scale, tracker = getattr(scaler, "_scale", None), getattr(scaler, "_growth_tracker", None)
        saved = [t.clone() if isinstance(t, torch.Tensor) else None for t in (scale, tracker)]
        result = update(*args, **kwargs)
        for live, kept in zip((getattr(scaler, "_scale", None), getattr(scaler, "_growth_tracker", None)), saved):
            if isinstance(live, torch.Tensor) and kept is not None:
                live.copy_(kept)
        return result

    def release(self, step: Optional[int] = None) -> None:
        """At a later step's check (`step`), or for good (None)."""
        if step is not None and self.step is not None and step <= self.step:
            return
        self.armed = False
        self.step = None
        self._release_scheduler()


def gather_samples(watch: Any, samples: Optional[list[int]]) -> tuple[list[int], Optional[dict[str, list[int]]]]:
    """Every rank's samples (one small collective over the watch's gloo group; slow path only)."""
    guard = getattr(watch, "distributed", None)
    if guard is None:
        return list(samples or []), None
    import torch.distributed as dist
    gathered: list[Any] = [None] * guard.world_size
    dist.all_gather_object(gathered, list(samples or []), group=guard.group)
    by_rank = {str(r): list(s or []) for r, s in enumerate(gathered)}
    merged = sorted({i for s in by_rank.values() for i in s})
    return merged, by_rank


def rank_agreed(watch: Any, host: list[float]) -> tuple[float, float]:
    """This step's loss and gradient norm as every rank sees them: the mean of the ranks' losses
    and the largest of their gradient norms (equal under DDP; under FSDP each rank's shard), from
    the flag table every rank already holds (no extra transfer). A single process: its own."""
    loss, grad_norm = host[SLOT["loss"]], host[SLOT["grad_norm"]]
    table = getattr(watch.distributed, "table", None) if watch.distributed is not None else None
    if not table:
        return loss, grad_norm
    losses = [row[SLOT["loss"]] for row in table if math.isfinite(row[SLOT["loss"]])]
    norms = [row[SLOT["grad_norm"]] for row in table if not math.isnan(row[SLOT["grad_norm"]])]
    return (sum(losses) / len(losses) if losses else loss), (max(norms) if norms else grad_norm)
