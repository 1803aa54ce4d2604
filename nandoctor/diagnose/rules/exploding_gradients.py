"""Gradient norms growing by orders of magnitude."""
from __future__ import annotations

import math

from ...trace import RunTrace
from ...trace.numbers import num
from ..facts import clip_fix, finite, leaf_param_layers, median, module_label
from ..finding import Finding, Severity
from .base import Context, Rule


class ExplodingGradients(Rule):
    """What it detects: gradient norms that grow by orders of magnitude across steps, or that
    are orders of magnitude larger in early layers than in late ones (deep or recurrent nets
    without normalisation).

    Why it produces NaN or Inf: a gradient that grows geometrically through layers or time
    steps overflows, or produces an update that throws the weights far off, after which the
    forward pass overflows.

    Evidence used: total gradient norm per step, per-layer gradient norms (first vs last
    layer), and a re-run with gradient clipping at norm 1.

    How to fix: clip gradients (`grad_clip: 1.0` in the config, or
    `torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)` before `optimizer.step()`);
    add normalisation (LayerNorm) or residual connections; lower the learning rate.

    Example: a vanilla RNN over 200 steps with recurrent weights of spectral radius 1.5.

    Thresholds: `thresholds.exploding_growth` (1e3 growth of the total norm),
    `thresholds.exploding_layer_ratio` (1e4 first/last layer) and
    `thresholds.exploding_grad_weight_ratio` (1e3 ||grad||/||w||). Confidence 0.75 with a
    failure at the first step, 0.6 with a failure, 0.55 as a warning.
    """

    id = "exploding-gradients"
    title = "exploding gradients"
    experiments = {"clip-grad": "finite"}

    def check(self, ctx: Context) -> list[Finding]:
        growth_limit = ctx.thresholds["exploding_growth"]
        layer_limit = ctx.thresholds["exploding_layer_ratio"]
        gw_limit = ctx.thresholds["exploding_grad_weight_ratio"]
        best = None
        for run in ctx.trace.runs:
            gw = _grad_weight_peak(run)
            norms = [(s.step, s.grad_norm) for s in run.steps if s.grad_norm is not None and math.isfinite(s.grad_norm)
                     and s.grad_norm > 0 and not s.skipped]
            growth = (max(n for _, n in norms) / norms[0][1]) if len(norms) >= 2 else 1.0
            layers = leaf_param_layers(run)
            ratio = None
            if len(layers) >= 2:
                first = median(finite(layers[0].series["param_grad_norm"]))
                last = median(finite(layers[-1].series["param_grad_norm"]))
                if first and last:
                    ratio = first / last
            backward_overflow = (run.first_nonfinite is not None and run.first_nonfinite.phase == "backward"
                                 and run.first_nonfinite.kind == "inf")
            if growth > growth_limit or (ratio and ratio > layer_limit) or (backward_overflow and growth > 10) \
                    or gw[0] > gw_limit:
                score = max(growth / growth_limit, (ratio or 0) / layer_limit, gw[0] / gw_limit)
                score *= 1e6 if run.first_nonfinite is not None else 1.0   # a failing run explains more
                if best is None or score > best[0]:
                    best = (score, run, growth, ratio, norms, layers, gw)
        if best is None:
            return []
        _, run, growth, ratio, norms, layers, gw = best
        evidence = []
        if gw[0] > gw_limit:
            evidence.append(f"gradient norm of {module_label(gw[1])} is {num(gw[0])}x its weight norm at step {gw[2]} "
                            f"(healthy layers stay below ~1; threshold {num(gw_limit)})"
                            + (" before any update, so the learning rate is not the cause" if gw[2] == run.start_step else ""))
        if growth > 1 and norms:
            peak = max(norms, key=lambda n: n[1])
            evidence.append(f"total gradient norm grew {num(growth)}x, from {num(norms[0][1])} at step {norms[0][0]} "
                            f"to {num(peak[1])} at step {peak[0]}")
        if ratio and ratio > 1:
            evidence.append(f"first-layer gradient norm is {num(ratio)}x the last layer's "
                            f"({module_label(layers[0].module)} vs {module_label(layers[-1].module)})")
        failed = run.first_nonfinite is not None
        if failed:
            evidence.append(f"{run.precision} turned non-finite at step {run.first_nonfinite.step}")
        fix = clip_fix(ctx.trace)
        module = gw[1] if gw[0] > gw_limit else (layers[0].module if layers else None)
        layer = run.layer(module) if module is not None else None
        if layer is not None and layer.type in ("RNN", "RNNCell"):
            fix += "; for a ReLU RNN keep the recurrent weights' spectral radius below 1, or use an LSTM/GRU"
        at_start = gw[0] > gw_limit and gw[2] == run.start_step
        return [Finding(self.id, (Severity.ERROR if failed else Severity.WARNING).value,
                        (0.75 if at_start else 0.6) if failed else 0.55,
                        f"gradients explode in {module_label(module)}", evidence, fix,
                        module=module, source=layer.source if layer else None, precisions=[run.precision],
                        explains_origin=failed and (at_start or run.first_nonfinite.phase in ("backward", "optimizer")))]


def _grad_weight_peak(run: RunTrace) -> tuple[float, str, int]:
    """Largest ||grad|| / ||w|| of any layer at any recorded step: (ratio, module, step)."""
    best = (0.0, "", -1)
    for layer in run.layers:
        grads, weights = layer.series.get("param_grad_norm", []), layer.series.get("param_norm", [])
        for i, (g, w) in enumerate(zip(grads, weights)):
            # param_norm is recorded after the step: compare with the weight before it.
            before = weights[i - 1] if i > 0 else w
            if g is None or before is None or not math.isfinite(g) or not before or not math.isfinite(before):
                continue
            if g / before > best[0]:
                best = (g / before, layer.module, run.start_step + i)
    return best
