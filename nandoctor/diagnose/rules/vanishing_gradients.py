"""Early layers' gradients far below the last layers'."""
from __future__ import annotations

import math

from ...trace.numbers import num
from ..facts import finite, leaf_param_layers, median, module_label
from ..finding import Finding, Severity
from .base import Context, Rule


class VanishingGradients(Rule):
    """What it detects: early layers whose gradient norms are orders of magnitude below the
    last layers' (threshold `thresholds.vanishing_ratio`), so the early layers barely learn.

    Why it produces NaN or Inf: it usually does not by itself; it silently stalls training,
    and in float16 the tiny gradients flush to zero (see fp16-underflow).

    Evidence used: median per-layer parameter gradient norms over the run, first layer vs last.

    How to fix: use ReLU/GELU instead of saturating sigmoid/tanh stacks, add residual
    connections and normalisation (LayerNorm/BatchNorm), or initialise with the gain of the
    activation (`nn.init.xavier_uniform_(w, gain=nn.init.calculate_gain('tanh'))`).

    Example: a 12-layer MLP of Linear+Sigmoid: the first layer's gradient is 1e-7 of the last.

    Thresholds: `thresholds.vanishing_ratio` (1e-4 first/last layer median gradient norm).
    Confidence 0.7 + 0.1 per decade below the threshold, capped at 0.95.
    """

    id = "vanishing-gradients"
    title = "vanishing gradients"

    def check(self, ctx: Context) -> list[Finding]:
        limit = ctx.thresholds["vanishing_ratio"]
        for run in ctx.trace.runs:
            if run.status != "ok" or run.precision not in ("32-true", "bf16-mixed", "16-mixed"):
                continue
            layers = leaf_param_layers(run)
            if len(layers) < 3:
                continue
            first = median(finite(layers[0].series["param_grad_norm"]))
            last = median(finite(layers[-1].series["param_grad_norm"]))
            if first is None or not last:
                continue
            ratio = first / last
            if ratio >= limit:
                continue
            saturating = {t: n for t, n in ctx.trace.model.module_types.items() if t in ("Sigmoid", "Tanh")}
            fix = ("add residual connections and normalisation, or initialise with the activation's gain")
            if saturating:
                fix = (f"replace the saturating activations ({', '.join(f'{n} {t}' for t, n in saturating.items())}) "
                       "with ReLU/GELU, and " + fix)
            return [Finding(self.id, Severity.WARNING.value, min(0.95, 0.7 + 0.1 * math.log10(limit / max(ratio, 1e-30))),
                            f"early layers get {num(ratio)}x the last layer's gradient",
                            [f"median gradient norm {num(first)} in {module_label(layers[0].module)} vs {num(last)} in "
                             f"{module_label(layers[-1].module)} over {run.steps_run} steps ({run.precision})"],
                            fix, module=layers[0].module, source=layers[0].source, precisions=[run.precision])]
        return []
