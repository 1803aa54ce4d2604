"""Confirming experiments inside the user's own loop: rewind to an earlier state, change one
thing, and let the loop train on.

`nandoctor run` keeps a rolling copy (a temporary file) of the weights and optimizer state every
K steps: the first one and the latest. When the diagnosis asks whether a lower learning rate would
have kept the run finite, the guard puts an earlier copy back into the live model and optimizer
and lets the script's own loop run from there, past the step that failed, with every step's
learning rate scaled: the loop's data, its schedule and its own code, one change. The first
non-finite loss, gradient or weight ends the experiment; reaching a few steps past the failure
ends it finite.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..run import stats
from ..trace import ExperimentResult

# An experiment runs this many steps past the failing step (a change that only delays the
# failure by a step or two is not a fix); the scan's experiments use the same margin.
EXTRA_STEPS = 5
# When the script's loop ends before the experiment reaches the failing step, the experiment still
# answers if it ran past the step where the watched run's loss had grown DIVERGED_GROWTH times
# from the experiment's start, and its own loss there stayed within HEALTHY_GROWTH of that start.
DIVERGED_GROWTH = 1e3
HEALTHY_GROWTH = 10.0


@dataclass
class Snapshot:
    """The weights and optimizer state before step `step`'s update. Plain tensors are written to
    a temporary file (`path`): a copy held in memory was one more model's worth of the process's
    peak RSS (+340 MB on a GPT-2-small shape, three times that once Adam has state), for a state
    read only after a failure. The file is read back memory-mapped when an experiment re-trains
    from it, and deleted by `discard`, or at exit."""
    step: int                              # the state before this step's update
    nbytes: int
    path: Optional[Path] = None
    state: Optional[dict[str, Any]] = None          # in memory: tensors a file cannot stand for
    _finalizer: Any = field(default=None, repr=False)

    @property
    def saved(self) -> bool:
        return self.path is not None or self.state is not None

    def load(self) -> dict[str, Any]:
        """{"model": state dict, "optimizer": state dict}, new tensors on every call (each
        experiment starts from its own copy)."""
        if self.path is None:
            return copy.deepcopy(self.state)
        # Memory-mapped and private: pages are read as load_state_dict copies them; in-place
        # updates of a state the optimizer adopts copy their pages and never reach the file.
        return torch.load(self.path, map_location="cpu", mmap=True, weights_only=False)

    def discard(self) -> None:
        """Delete the file now (a discarded snapshot is never loaded again)."""
        if self._finalizer is not None:
            self._finalizer()


def _delete(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


FILE_PREFIX = "nandoctor-rewind-"
_orphans_checked = False


def _remove_orphans() -> None:
    """Delete the rewind files of runs that died without their exit handlers (SIGKILL, the OOM
    killer): each file names its process, and a file whose process is gone is nobody's. Once per
    process; a file of a live process (or of another user's, which we may not signal) stays."""
    global _orphans_checked
    if _orphans_checked:
        return
    _orphans_checked = True
    for path in Path(tempfile.gettempdir()).glob(f"{FILE_PREFIX}*-*-*.pt"):
        if process_gone(path.name[len(FILE_PREFIX):].split("-", 1)[0]):
            _delete(path)


def process_gone(pid: str) -> bool:
    """Whether the process a temporary file is named by (`pid`, as text) has ended; False for this
    process, a live one, or one of another user's (which we may not signal)."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError, OverflowError):
        return False
    return False


def _save_without_checksum(state: dict[str, Any], path: Path) -> None:
    """torch.save without its per-record CRC32 (measured: 0.7 of 0.8 CPU seconds for 324 MiB);
    the file is read back by this process only."""
    try:
        from torch.utils.serialization import config
    except ImportError:          # an older torch: checksummed
        torch.save(state, path)
        return
    saved = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        torch.save(state, path)
    finally:
        config.save.compute_crc32 = saved


def take_snapshot(step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  max_bytes: Optional[int] = None) -> Snapshot:
    """The weights and optimizer state the step at `step` starts from (see Snapshot). Over
    `max_bytes`, nothing is saved: the Snapshot only has its size (`saved` is False)."""
    weights = model.state_dict()
    sd = optimizer.state_dict()
    state = {"model": weights, "optimizer": sd}
    tensors = stats.state_tensors(state)
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    _remove_orphans()         # also when this one is not written: the first snapshot of a run cleans up
    if max_bytes is not None and nbytes > max_bytes:
        return Snapshot(step, nbytes)
    if all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors):
        fd, name = tempfile.mkstemp(prefix=f"{FILE_PREFIX}{os.getpid()}-{step}-", suffix=".pt")
        os.close(fd)
        path = Path(name)
        try:
            # torch.save writes each storage from where it lives (a GPU one through one
            # temporary CPU copy at a time): no second copy of the state in this process.
            _save_without_checksum(state, path)
        except (OSError, RuntimeError):      # no room in the temporary folder: in memory instead
            _delete(path)
        else:
            return Snapshot(step, nbytes, path=path, _finalizer=weakref.finalize(_FILES, _delete, path))
    # Tensor subclasses (FSDP2's DTensors, ...) or no room on disk: a detached CPU copy in memory.
    copied = {"model": {k: v.detach().to("cpu", copy=True) for k, v in weights.items()},
              "optimizer": {"state": {index: {key: value.detach().to("cpu", copy=True) if isinstance(value, torch.Tensor)
                                              else copy.deepcopy(value) for key, value in entry.items()}
                                      for index, entry in sd["state"].items()},
                            "param_groups": copy.deepcopy(sd["param_groups"])}}
    return Snapshot(step, nbytes, state=copied)


class _Files:
    """What the temporary files' finalizers hang on: it lives as long as the process, so a file
    goes when its snapshot is discarded, or at exit (weakref.finalize runs then)."""


_FILES = _Files()


def restore(snapshot: Snapshot, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    state = snapshot.load()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


@dataclass
class LrRewind:
    """One lower-lr experiment: from `start` with every step's lr times `scale`, until `until`."""
    scale: float
    start: int
    until: int
    result: ExperimentResult
    step: int = 0
    began: float = 0.0
    saved_lrs: Optional[list[Any]] = None
    losses: dict[int, float] = field(default_factory=dict)   # the re-trained run's mean loss per step

    def begin(self) -> None:
        self.step = self.start
        self.began = time.perf_counter()

    def scale_lr(self, optimizer: torch.optim.Optimizer) -> None:
        self.saved_lrs = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * self.scale

    def restore_lr(self, optimizer: torch.optim.Optimizer) -> None:
        if self.saved_lrs is not None:
            for group, lr in zip(optimizer.param_groups, self.saved_lrs):
                group["lr"] = lr
            self.saved_lrs = None

    def finish(self, outcome: str, first_bad: Optional[int] = None, note: str = "") -> ExperimentResult:
        self.result.outcome = outcome
        self.result.first_bad_step = first_bad
        self.result.steps_run = self.step - self.start + (1 if outcome == "nonfinite" else 0) if self.began else 0
        self.result.seconds = time.perf_counter() - self.began if self.began else 0.0
        self.result.note = note
        return self.result

    def ended_early(self, failing_step: int, history: Optional[list[dict[str, Any]]] = None) -> ExperimentResult:
        """The script's loop ran out of iterations during the experiment: finite when it had got
        past the step that failed, or past the step where the watched run had already diverged
        (`history`: its per-step records) while this one stayed near its starting loss; else
        unanswered."""
        if self.began and self.step > failing_step:
            return self.finish("finite", note=f"the script ended {self.step - 1 - failing_step} step(s) past the "
                                              "failing step, every step finite")
        diverged = self._past_divergence(history or [])
        if diverged is not None:
            step, original, start, retrained = diverged
            return self.finish("finite", note=(
                f"the script ended {failing_step - self.step + 1} step(s) before the failing step; at step {step}, "
                f"where the watched run's loss had grown from {start:.3g} to {original:.3g}, this run's was "
                f"{retrained:.3g}, every step finite"))
        return self.finish("skipped", note="the script ended first")

    def _past_divergence(self, history: list[dict[str, Any]]) -> Optional[tuple[int, float, float, float]]:
        """(step, the watched run's loss, its loss at the start, this run's loss) at the first step
        this run reached where the watched run's loss was DIVERGED_GROWTH times its start's and this
        run's within HEALTHY_GROWTH of it; None when there is none."""
        if not self.began:
            return None
        watched = {h["step"]: h.get("loss") for h in history if isinstance(h.get("loss"), (int, float))}
        start = watched.get(self.start)
        if start is None or not math.isfinite(start) or start <= 0:
            return None
        for step in sorted(watched):
            original = watched[step]
            if not self.start < step < self.step or not math.isfinite(original):
                continue
            if original >= DIVERGED_GROWTH * start:
                retrained = self.losses.get(step)
                if retrained is not None and math.isfinite(retrained) and retrained <= HEALTHY_GROWTH * start:
                    return step, original, start, retrained
                return None
        return None


def step_is_finite(losses: list[torch.Tensor], params: list[torch.Tensor]) -> bool:
    """One transfer: the step's losses, its gradients and the weights it starts from."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    parts = [torch.stack([l.detach().float().reshape(()) for l in losses]).cpu()] if losses else []
    if grads:
        parts.append(stats.foreach_norms(grads, math.inf).float().cpu())
    weights = [p.detach() for p in params]
    if weights:
        parts.append(stats.foreach_norms(weights, math.inf).float().cpu())
    if not parts:
        return True
    return bool(torch.isfinite(torch.cat([p.reshape(-1) for p in parts])).all())


def lr_scales(update_ratio: Optional[float]) -> list[float]:
    """The factors to try: a tenth and a hundredth, and, when the run's update ratio is known, the
    factor that brings it to a healthy ~1e-3 (a learning rate 1e5 times too high needs that one)."""
    scales = [0.1, 0.01]
    if update_ratio is not None and math.isfinite(update_ratio) and update_ratio > 0.1:
        healthy = max(1e-5, 1e-3 / update_ratio)
        if healthy < 0.005:
            # First: the loop may have few iterations left, and this one answers the question.
            scales.insert(0, float(f"{healthy:.0e}"))
    return scales


def new_result(scale: float, lr: Optional[float], start: int, until: int, precision: str,
               restarted: bool = False) -> ExperimentResult:
    """`restarted`: re-trained by the script run again from its start (watcher/restart.py)."""
    shown = f"lr {lr:.0e} -> {lr * scale:.0e}" if lr is not None else f"lr x{scale:g}"
    label = (f"{shown}, re-trained from step 0 by the script run again from its start" if restarted
             else f"{shown}, re-trained by the script's loop from step {start}")
    return ExperimentResult(id="lower-lr", label=label,
                            precision=precision, change={"lr_scale": scale, "from_step": start},
                            steps_planned=until - start + 1)
