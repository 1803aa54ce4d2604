"""Training-dynamics causes: learning rate, initialisation, exploding and vanishing gradients."""
from __future__ import annotations

import math
from typing import Optional

from ...trace import RunTrace, SourceLocation
from ..facts import finite, leaf_param_layers, median, module_label, num
from ..finding import Finding, Severity
from .base import Context, Rule


def _max_update(run: RunTrace, until: Optional[int] = None) -> tuple[float, str, int]:
    """Largest per-layer update ratio ||dw||/||w|| (finite) before step index `until`."""
    best, where, at = 0.0, "", -1
    for layer in run.layers:
        values = layer.series.get("update_ratio", [])[:until]
        for i, v in enumerate(values):
            if v is not None and math.isfinite(v) and v > best:
                best, where, at = v, layer.module, run.start_step + i
    return best, where, at


def _loss_growth(run: RunTrace) -> tuple[float, Optional[float], Optional[float]]:
    losses = finite(s.loss for s in run.steps)
    if len(losses) < 2:
        return 1.0, None, None
    low = min(losses)
    last = losses[-1]
    if low <= 0:
        return (math.inf if last > 0 and low == 0 else 1.0), low, last
    return last / low, low, last


def _optimizer_location(ctx: Context) -> Optional[SourceLocation]:
    fn = ctx.trace.functions.get("build_optimizer")
    return fn


class HighLearningRate(Rule):
    """What it detects: a learning rate too high for the loss surface: parameter updates that
    are a large fraction of the weights (update ratio ||dw||/||w|| far above ~1e-3), a loss that
    grows step after step, and a run that ends non-finite after a few healthy steps.

    Why it produces NaN or Inf: each overshooting step grows the weights; activations and
    gradients grow with them until a matmul, an exp or a softmax overflows.

    Evidence used: per-layer update ratios before the failing step, the loss trend, the step
    at which the run failed, and re-runs with the learning rate divided by 10 and 100.

    How to fix: divide the learning rate by the factor the experiment confirmed; add warmup
    and gradient clipping for long runs.

    Example: SGD with lr=5 on a small MLP: update ratio 0.9 at step 2, loss 1e3 at step 4, NaN at 6.
    """

    id = "high-lr"
    title = "learning rate too high"
    experiments = {"lower-lr": "finite"}

    def check(self, ctx: Context) -> list[Finding]:
        limit = ctx.thresholds["update_ratio_high"]
        failing, warned = [], []
        for run in ctx.trace.runs:
            if run.first_nonfinite is not None and run.first_nonfinite.phase in ("data", "init"):
                continue
            ratio, where, at = _max_update(run)
            growth, low, last = _loss_growth(run)
            failed = run.first_nonfinite is not None and run.first_nonfinite.step > run.start_step
            big_updates = ratio > limit
            diverging = growth > 10
            if failed and big_updates:
                failing.append((run, ratio, where, at, growth, low, last))
            elif run.status == "ok" and big_updates and diverging:
                warned.append((run, ratio, where, at, growth, low, last))
        chosen = failing or warned
        if not chosen:
            return []
        run, ratio, where, at, growth, low, last = max(chosen, key=lambda c: c[1])
        lr = run.optimizer.get("lr")
        evidence = []
        if ratio > limit:
            evidence.append(f"update ratio {num(ratio)} at step {at} in {module_label(where)} "
                            f"(healthy runs stay near 1e-3; threshold {num(limit)})")
        if low is not None and growth > 1:
            evidence.append(f"loss grew from a minimum of {num(low)} to {num(last)} ({num(growth)}x) before "
                            + (f"turning non-finite at step {run.first_nonfinite.step}" if run.first_nonfinite else "the end"))
        others = [f"{r.precision} at step {r.first_nonfinite.step}" for r, *_ in failing if r is not run and r.first_nonfinite]
        if others:
            evidence.append("also failing: " + ", ".join(others))
        new_lr = f"{lr / 10:.0e}" if isinstance(lr, (int, float)) else "a tenth"
        loc = _optimizer_location(ctx)
        where_lr = f"in build_optimizer ({loc})" if loc else "(config `optimizer.lr` or `--lr`)"
        fix = f"lower the learning rate from {num(lr) if isinstance(lr, (int, float)) else lr} to {new_lr} {where_lr}; add warmup and `grad_clip` for long runs"
        severity = Severity.ERROR if failing else Severity.WARNING
        confidence = 0.5 + (0.15 if ratio > 10 * limit else 0) + (0.1 if growth > 10 else 0)
        return [Finding(self.id, severity.value, min(confidence, 0.85),
                        f"learning rate {num(lr) if isinstance(lr, (int, float)) else lr} is too high: the run diverges",
                        evidence, fix, module=where or None, source=loc,
                        precisions=[c[0].precision for c in chosen], explains_origin=bool(failing))]

    def plan(self, ctx, finding):  # type: ignore[override]
        requests = super().plan(ctx, finding)
        return requests[:1]   # one precision is enough: the learning rate is precision-independent


class BadInit(Rule):
    """What it detects: parameters that are non-finite or badly scaled at initialisation:
    a NaN loaded or computed into a weight, a custom init with a huge std, activations that
    grow (or shrink) by orders of magnitude layer after layer on the very first forward pass.

    Why it produces NaN or Inf: with weights of std s, each layer multiplies activation scale
    by about s * sqrt(fan_in); over a few layers that overflows float16 or even float32 before
    the first update, and the gradients are as extreme.

    Evidence used: non-finite parameter counts and max |w| before step 0, where each parameter
    was last written in build_model(), and per-layer max |activation| at step 0; a re-run with
    every module's default `reset_parameters()`.

    How to fix: remove the custom init at the reported line or use a scaled one
    (`nn.init.kaiming_normal_` for ReLU, `xavier_uniform_` for tanh, std ~ 1/sqrt(fan_in)).

    Example: `nn.init.normal_(layer.weight, std=10.0)` in a 6-layer MLP: activations reach 1e12.
    """

    id = "bad-init"
    title = "bad parameter initialisation"
    experiments = {"reinit": "finite"}

    def plan(self, ctx, finding):  # type: ignore[override]
        # A parameter that is NaN before the first step is a fact, not a hypothesis to test
        # (and reset_parameters() does not touch parameters outside standard layers).
        return [] if finding.explains_origin and finding.confidence >= 0.95 else super().plan(ctx, finding)

    def check(self, ctx: Context) -> list[Finding]:
        limit_w = ctx.thresholds["init_weight_abs_max"]
        limit_growth = ctx.thresholds["init_growth"]
        findings: list[Finding] = []
        runs = [r for r in ctx.trace.runs if r.params]
        if not runs:
            return []
        init_failures = [r for r in runs if r.first_nonfinite and r.first_nonfinite.phase == "init"
                         and r.first_nonfinite.surfaced_in != "checkpoint"]   # loaded, not initialised
        if init_failures:
            run = init_failures[0]
            event = run.first_nonfinite
            assert event is not None
            param = next((p for p in run.params if p.name == event.parameter), None)
            loc = param.init_source if param else None
            findings.append(Finding(self.id, Severity.ERROR.value, 0.95,
                                    f"parameter {event.parameter} is non-finite before the first step",
                                    [event.detail], f"fix the initialisation of {event.parameter}"
                                    + (f" at {loc} (`{loc.code}`)" if loc else "") + "; it holds NaN/Inf before training starts",
                                    module=event.module, source=loc, precisions=[r.precision for r in init_failures],
                                    explains_origin=True))
            return findings
        run = runs[0]
        huge = [p for p in run.params if p.init_max_abs is not None and p.init_max_abs > limit_w]
        layers = [l for l in leaf_param_layers(run) if l.series["act_max_abs"] and l.series["act_max_abs"][0] is not None]
        growth = None
        finite_acts = [(l, l.series["act_max_abs"][0]) for l in layers if math.isfinite(l.series["act_max_abs"][0])]
        if len(finite_acts) >= 2 and finite_acts[0][1] > 0:
            growth = max(v for _, v in finite_acts[1:]) / finite_acts[0][1]
        early_fail = [r for r in runs if r.first_nonfinite and r.first_nonfinite.step <= r.start_step + 1
                      and r.first_nonfinite.phase in ("forward", "loss", "backward")]
        types = {l.module: l.type for l in run.layers}
        big_std = [p for p in run.params if _rms(p) > 10 * _default_rms(p, types.get(p.module, ""))]
        if not huge and not big_std and not (growth is not None and growth > limit_growth):
            return []
        evidence = []
        suspects = huge or big_std
        if suspects:
            worst = max(suspects, key=lambda p: _rms(p) / _default_rms(p, types.get(p.module, "")))
            evidence.append(f"{worst.name}: weight rms {num(_rms(worst))}, max |w| {num(worst.init_max_abs)} at init "
                            f"(the default init of a {types.get(worst.module, 'layer')} this size gives rms "
                            f"~{num(_default_rms(worst, types.get(worst.module, '')))})")
            loc = worst.init_source
            module = worst.module
        else:
            loc, module = layers[-1].source, layers[-1].module
        if growth is not None and growth > 1:
            evidence.append(f"step 0: max |activation| grows {num(growth)}x from {module_label(layers[0].module)} "
                            f"to the deepest layer")
        if early_fail:
            evidence.append("runs failing at the first steps: " + ", ".join(
                f"{r.precision} at step {r.first_nonfinite.step}" for r in early_fail if r.first_nonfinite))
        severity = Severity.ERROR if early_fail else Severity.WARNING
        fix = ("remove the custom initialisation" + (f" at {loc} (`{loc.code}`)" if loc else "")
               + " or scale it to std ~ 1/sqrt(fan_in) (`nn.init.kaiming_normal_(w, nonlinearity='relu')`, "
               "`nn.init.xavier_uniform_(w)`)")
        findings.append(Finding(self.id, severity.value, 0.75 if early_fail else 0.6,
                                "weights are badly scaled at initialisation", evidence, fix, module=module,
                                source=loc, precisions=[r.precision for r in (early_fail or runs)],
                                explains_origin=bool(early_fail)))
        return findings


def _rms(p) -> float:
    return (p.init_norm or 0.0) / math.sqrt(max(p.numel, 1))


def _default_rms(p, module_type: str) -> float:
    """rms of PyTorch's default init for this parameter (kaiming_uniform(a=sqrt(5)) for
    Linear/Conv weights = U(+-1/sqrt(fan_in)); N(0, 1) for Embedding); inf when unknown."""
    if len(p.shape) < 2:
        return math.inf
    if module_type == "Embedding" or module_type == "EmbeddingBag":
        return 1.0
    if module_type.startswith(("Linear", "Conv", "LazyLinear", "Bilinear")) or module_type.endswith("Linear"):
        fan_in = 1
        for d in p.shape[1:]:
            fan_in *= d
        return 1.0 / math.sqrt(3 * max(fan_in, 1))
    return math.inf


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
        clip = ctx.trace.config.get("grad_clip")
        fix = ("clip gradients: set `grad_clip: 1.0` in the config (the training loop then calls "
               "`torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)` before `optimizer.step()`)"
               if not clip else f"gradient clipping at {clip} is on; lower the learning rate or add normalisation")
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
