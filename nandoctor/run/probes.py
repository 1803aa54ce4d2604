"""The one interface through which a training step talks to what watches it.

`TrainingSession.run_step` calls every probe at the same points of every step: the recorder
(per-module statistics), the finiteness check (is the loss, a gradient or a parameter
non-finite?) and the origin tracer (op-level replay) all see the same calls, so one forward and
one backward serve all of them, as Cockpit's quantities share one backward pass.

The finiteness check is the base of the recorder: the step decides whether it failed from the
same `StepFacts` whether or not the step is recorded, so the recorded run, the replay and the
confirming experiments can never disagree about what counts as a failure.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import ContextManager, Optional, Sequence

import torch

from ..trace import Phase
from . import stats


@dataclass
class StepFacts:
    """Host-side facts of one step that decide whether it failed. Per-parameter lists follow the
    session's trainable parameters; a parameter without a gradient has None."""
    loss: float
    total_grad_norm: float = math.nan          # before clipping, after GradScaler.unscale_
    param_grad_norm: list[Optional[float]] = field(default_factory=list)
    param_grad_max: list[Optional[float]] = field(default_factory=list)
    param_norm: list[float] = field(default_factory=list)   # after the optimizer step

    @property
    def loss_finite(self) -> bool:
        return math.isfinite(self.loss)

    @property
    def grads_finite(self) -> bool:
        # From max |g|: an L2 norm of huge but finite gradients can overflow.
        return all(g is None or math.isfinite(g) for g in self.param_grad_max)

    @property
    def params_finite(self) -> bool:
        # An L2 norm overflows only for elements beyond ~1e19: as good as non-finite.
        return all(math.isfinite(n) for n in self.param_norm)


class StepProbe:
    """What a step tells a probe, in order. Every method is optional (the defaults do nothing).

    - `on_phase(phase)`: the step enters a phase (data, forward, loss, backward, optimizer);
    - `wants_batch_sources()`: whether the data phase should record where batch tensors were made;
    - `on_batch(batch)`: when it did, the batch as the step will use it (on the device):
      (name, tensor, the user's line that made it or None) per tensor;
    - `after_backward()`: gradients are final (after GradScaler.unscale_, before clipping);
    - `before_optimizer_step()` / `after_optimizer_step()`: around optimizer.step();
    - `finish(loss, grad_scale)`: the step is over; a probe that measures returns its StepFacts;
    - `suspended()`: nandoctor's own tensor work inside the step, which a tracer must not see.
    """

    def on_phase(self, phase: Phase) -> None:
        pass

    def wants_batch_sources(self) -> bool:
        return False

    def on_batch(self, batch: list) -> None:
        pass

    def after_backward(self) -> None:
        pass

    def before_optimizer_step(self) -> None:
        pass

    def after_optimizer_step(self) -> None:
        pass

    def finish(self, loss: torch.Tensor, grad_scale: float = 1.0) -> Optional[StepFacts]:
        return None

    def suspended(self) -> ContextManager:
        return contextlib.nullcontext()


class FinitenessCheck(StepProbe):
    """Per-parameter gradient norms and max |g|, parameter norms and the loss, reduced on the
    device and moved to the host in one transfer at `finish`."""

    def __init__(self, params: Sequence[torch.Tensor]):
        self.params = list(params)
        self._reduced: dict[str, torch.Tensor] = {}
        self._grad_present: list[int] = []
        self._present_grads: list[torch.Tensor] = []

    @torch.no_grad()
    def after_backward(self) -> None:
        present = [(i, p.grad) for i, p in enumerate(self.params) if p.grad is not None]
        self._grad_present = [i for i, _ in present]
        grads = [g for _, g in present]
        self._reduced["grad_norm"] = stats.foreach_norms(grads, 2.0)
        # max |g| is needed only where the norm is not finite (a NaN/Inf, or an L2 norm that
        # overflowed): taken at `finish` for those gradients alone, not for every one every step.
        self._present_grads = grads

    @torch.no_grad()          # foreach on the parameters themselves: no per-parameter detach
    def after_optimizer_step(self) -> None:
        self._reduced["norm"] = stats.foreach_norms(self.params, 2.0)

    # Reductions a subclass adds to the same transfer: (name, per-gradient?) in transfer order.
    _EXTRA: tuple[tuple[str, bool], ...] = ()

    def finish(self, loss: torch.Tensor, grad_scale: float = 1.0) -> StepFacts:
        device = loss.device
        names = (("grad_norm", True), ("norm", False)) + self._EXTRA
        parts = [loss.detach().reshape(1).to(torch.float32)] + self._leading_parts(device)
        parts += [self._reduced[name].to(device).reshape(-1) for name, _ in names if name in self._reduced]
        flat = torch.cat(parts).tolist()     # the step's only host synchronisation
        pos = self._read_leading(flat, 1)
        count = len(self.params)
        values: dict[str, list[Optional[float]]] = {}
        for name, per_grad in names:
            if name not in self._reduced:
                values[name] = [None] * count
                continue
            n = self._reduced[name].numel()
            chunk = flat[pos:pos + n]
            pos += n
            if per_grad:
                full: list[Optional[float]] = [None] * count
                for i, v in zip(self._grad_present, chunk):
                    full[i] = v
                values[name] = full
            else:
                values[name] = list(chunk)
        values["grad_max"] = self._grad_max(values["grad_norm"])
        squares = [g * g for g in values["grad_norm"] if g is not None]
        facts = self._facts(flat[0], grad_scale, values)
        facts.total_grad_norm = math.sqrt(sum(squares)) if squares else math.nan
        facts.param_grad_norm, facts.param_grad_max = values["grad_norm"], values["grad_max"]
        facts.param_norm = values["norm"]  # type: ignore[assignment]
        self._reduced = {}
        self._grad_present = []
        self._present_grads = []
        return facts

    def _grad_max(self, norms: list[Optional[float]]) -> list[Optional[float]]:
        """Per-parameter max |g|: the norm stands in where it is finite (then so is every element);
        the rest are measured (a second host transfer, only on a step whose norms say so)."""
        out = list(norms)
        bad = [i for i in self._grad_present if out[i] is not None and not math.isfinite(out[i])]
        if bad:
            position = {i: k for k, i in enumerate(self._grad_present)}
            exact = stats.foreach_max_abs([self._present_grads[position[i]] for i in bad]).tolist()
            for i, value in zip(bad, exact):
                out[i] = value
        return out

    # ---- what a subclass adds to the transfer ---------------------------------------------------
    def _leading_parts(self, device: torch.device) -> list[torch.Tensor]:
        return []

    def _read_leading(self, flat: list[float], pos: int) -> int:
        return pos

    def _facts(self, loss: float, grad_scale: float, values: dict[str, list[Optional[float]]]) -> StepFacts:
        return StepFacts(loss=loss)
