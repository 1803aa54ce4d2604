"""Confirming experiments inside the user's own loop: rewind to an earlier state, change one
thing, and let the loop train on.

`nandoctor run` keeps a rolling copy (on the CPU) of the weights and optimizer state every K
steps: the first one and the latest. When the diagnosis asks whether a lower learning rate would
have kept the run finite, the guard puts an earlier copy back into the live model and optimizer
and lets the script's own loop run from there, past the step that failed, with every step's
learning rate scaled: the loop's data, its schedule and its own code, one change. The first
non-finite loss, gradient or weight ends the experiment; reaching a few steps past the failure
ends it finite.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
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
    step: int                              # the state before this step's update
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    nbytes: int


def take_snapshot(step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Snapshot:
    """A CPU copy of the weights and optimizer state the step at `step` starts from."""
    weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    sd = optimizer.state_dict()
    state = {index: {key: value.detach().to("cpu", copy=True) if isinstance(value, torch.Tensor) else copy.deepcopy(value)
                     for key, value in entry.items()} for index, entry in sd["state"].items()}
    nbytes = sum(t.numel() * t.element_size() for t in weights.values())
    nbytes += sum(v.numel() * v.element_size() for entry in state.values() for v in entry.values()
                  if isinstance(v, torch.Tensor))
    return Snapshot(step, weights, {"state": state, "param_groups": copy.deepcopy(sd["param_groups"])}, nbytes)


def restore(snapshot: Snapshot, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model.load_state_dict(snapshot.model)
    optimizer.load_state_dict(copy.deepcopy(snapshot.optimizer))
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


def new_result(scale: float, lr: Optional[float], start: int, until: int, precision: str) -> ExperimentResult:
    shown = f"lr {lr:.0e} -> {lr * scale:.0e}" if lr is not None else f"lr x{scale:g}"
    return ExperimentResult(id="lower-lr", label=f"{shown}, re-trained by the script's loop from step {start}",
                            precision=precision, change={"lr_scale": scale, "from_step": start},
                            steps_planned=until - start + 1)
