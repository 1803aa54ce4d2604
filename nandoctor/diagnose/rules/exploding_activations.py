"""Activations (or the loss) that grow by orders of magnitude over layers or steps."""
from __future__ import annotations

import math
from typing import Optional

from ...trace import RunTrace
from ...trace.numbers import num
from ..facts import clip_fix, module_label, where
from ..finding import Finding, Severity
from ..ownership import owner
from .base import Context, Rule

# The limits are thresholds.activation_abs_max (1e8), .loss_abs_max (1e10) and
# .activation_growth (1e3): see trace/thresholds.py for why each value.
RECURRENT = ("RNN", "RNNCell", "LSTM", "GRU", "LSTMCell", "GRUCell")


def _peak(run: RunTrace) -> tuple[float, str, int, float]:
    """(max |activation|, module, step, growth of that module over the steps) of the run."""
    best = (0.0, "", -1, 1.0)
    for layer in run.layers:
        values = layer.series.get("act_max_abs", [])
        for i, v in enumerate(values):
            if v is not None and math.isfinite(v) and v > best[0]:
                first = next((x for x in values if x is not None and math.isfinite(x) and x > 0), v)
                best = (v, layer.module, run.start_step + i, v / first if first else 1.0)
    return best


def _largest_loss(run: RunTrace) -> Optional[tuple[float, int]]:
    losses = [(abs(s.loss), s.step) for s in run.steps if s.loss is not None and math.isfinite(s.loss)]
    return max(losses) if losses else None


class ExplodingActivations(Rule):
    """What it detects: activations that reach absurd magnitudes (max |activation| above 1e8)
    or grow by orders of magnitude over the steps, or a loss above 1e10, in any run, whether
    or not the replay of the failing step reproduced the NaN. Typical of recurrent nets whose
    recurrent matrix has a spectral radius above 1, and of deep stacks without normalisation.

    Why it produces NaN or Inf: a value that grows geometrically through layers or time
    steps overflows (float16 at 65504, float32 at 3.4e38) in the next matmul or square, and
    its gradient, a sum of squares (the total norm), overflows first.

    Evidence used: per-layer max |activation| per step, the loss per step, the layer type,
    and where the failing step stopped.

    How to fix: for a recurrent layer, initialise the recurrent weights with spectral radius
    below 1 (`nn.init.orthogonal_(rnn.weight_hh_l0)`), or use an LSTM/GRU; add normalisation
    (LayerNorm) between blocks; clip gradients (`grad_clip: 1.0`); lower the learning rate if
    the growth comes over steps rather than at step 0.

    Example: a ReLU RNN with `weight_hh = 1.8 * I` over 50 time steps: activations 3.4e12 and a
    loss of 2e23 at step 0.

    Thresholds: 1e8 for |activation| (O(1) is normal after normalisation; its square overflows
    float16 and approaches float32's range in a few products), 1e10 for the loss, 1e3 growth
    over steps. Confidence 0.55 when the run failed (below exploding-gradients: when both fire, the
    gradients are the better-tested story), 0.5 as a warning.
    """

    id = "exploding-activations"
    title = "exploding activations"
    experiments = {"clip-grad": "finite"}

    def check(self, ctx: Context) -> list[Finding]:
        matching = [run for run in sorted(ctx.trace.runs, key=lambda r: r.first_nonfinite is None) if self._applies(ctx, run)]
        return [self._finding(ctx, matching[0], matching)] if matching else []

    def _applies(self, ctx: Context, run: RunTrace) -> bool:
        limit_act, limit_loss = ctx.thresholds["activation_abs_max"], ctx.thresholds["loss_abs_max"]
        peak, _, _, growth = _peak(run)
        loss = _largest_loss(run)
        event = run.first_nonfinite
        owned = event is not None and owner(event, ctx.trace) == self.id
        return (owned or peak > limit_act or (loss is not None and loss[0] > limit_loss)
                or (growth > ctx.thresholds["activation_growth"] and peak > limit_act / 1e4 and event is not None))

    def _finding(self, ctx: Context, run: RunTrace, matching: list[RunTrace]) -> Finding:
        peak, module, step, growth = _peak(run)
        loss = _largest_loss(run)
        huge_loss = loss is not None and loss[0] > ctx.thresholds["loss_abs_max"]
        event = run.first_nonfinite
        owned = event is not None and owner(event, ctx.trace) == self.id
        failed = event is not None
        evidence = []
        if peak:
            evidence.append(f"max |activation| {num(peak)} in {module_label(module)} at step {step}"
                            + (f", {num(growth)}x its first recorded value" if growth > 10 else "")
                            + f" (normalised layers stay near 1; threshold {num(ctx.thresholds['activation_abs_max'])})")
        if huge_loss and loss is not None:
            evidence.append(f"loss {num(loss[0])} at step {loss[1]}")
        if owned and event is not None:
            evidence.append(f"{event.call or event.op or 'an op'}{' at ' + str(where(event)) if where(event) else ''} "
                            f"overflowed {run.precision}'s range in {event.phase} at step {event.step}")
        elif event is not None:
            evidence.append(f"{run.precision} went non-finite at step {event.step} in {event.phase}"
                            + (" (the replay stayed finite: the values sit at the edge of the range)"
                               if event.reproduced is False else ""))
        layer = run.layer(module)
        fix = ("add normalisation (LayerNorm) between blocks; " + clip_fix(ctx.trace)
               + (f"; {module_label(module)} is a {layer.type}: initialise its recurrent weights with spectral "
                  "radius below 1 (`nn.init.orthogonal_(weight_hh)`) or use an LSTM/GRU"
                  if layer is not None and layer.type in RECURRENT else ""))
        if layer is not None and layer.source is not None:
            fix = f"at {layer.source} (`{layer.source.code}`): " + fix if layer.source.code else f"at {layer.source}: " + fix
        explains = owned or (failed and owner(event, ctx.trace) in (None, "nonreproducible"))
        return Finding(self.id, (Severity.ERROR if failed else Severity.WARNING).value, 0.55 if failed else 0.5,
                        f"activations explode in {module_label(module or (event.module if event else None))}"
                        + (f" (max |x| {num(peak)})" if peak else ""), evidence, fix,
                        module=module or None, source=(layer.source if layer else None) or (where(event) if owned and event else None),
                        precisions=[r.precision for r in matching], explains_origin=bool(explains), mechanism="overflow")
