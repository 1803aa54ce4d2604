"""Parameters non-finite or badly scaled at initialisation."""
from __future__ import annotations

import math

from ...trace.numbers import num
from ..facts import leaf_param_layers, module_label
from ..finding import Finding, Severity
from ..ownership import fails_only_in_16bit, is_16bit
from .base import Context, Rule


class BadInit(Rule):
    """What it detects: parameters that are non-finite or badly scaled at initialisation:
    a NaN loaded or computed into a weight, a custom init with a huge std, activations that
    grow (or shrink) by orders of magnitude layer after layer on the very first forward pass.

    Why it produces NaN or Inf: with weights of std s, each layer multiplies activation scale
    by about s * sqrt(fan_in); over a few layers that overflows float16 or even float32 before
    the first update, and the gradients are as extreme.

    Evidence used: non-finite parameter counts and max |w| before step 0, where each parameter
    was last written in build_model(), and per-layer max |activation| at step 0; a re-run with
    every module's default `reset_parameters()`. Only weights at step 0 count: a run resumed
    from a checkpoint or a crash bundle's replay at a later step (or one with a history of
    steps) starts from weights the optimizer has already moved, which say nothing of the init.

    How to fix: remove the custom init at the reported line or use a scaled one
    (`nn.init.kaiming_normal_` for ReLU, `xavier_uniform_` for tanh, std ~ 1/sqrt(fan_in)).

    Example: `nn.init.normal_(layer.weight, std=10.0)` in a 6-layer MLP: activations reach 1e12.

    Thresholds: `thresholds.init_weight_abs_max` (1e3) and `thresholds.init_growth` (1e3); a weight
    rms 10x PyTorch's default init for that layer. Confidence 0.95 for a non-finite parameter,
    0.75 with an early failure, 0.6 as a warning.
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
        # Only step-0 weights are an initialisation. A run that starts later (scan --checkpoint,
        # the replay of a crash bundle) or that has a history of steps holds weights the optimizer
        # has already moved: a huge rms there is what training did, not what build_model() made.
        runs = [r for r in ctx.trace.runs if r.params and r.start_step == 0 and not r.history]
        if not runs:
            return []
        # Values loaded from a checkpoint (scan --checkpoint) are not build_model()'s initialisation.
        init_failures = [r for r in runs if r.first_nonfinite and r.first_nonfinite.phase == "init"
                         and r.first_nonfinite.surfaced_in != "checkpoint"]
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
        # A failure only in float16 while float32 ran the same step clean is a range problem of
        # the precision, unless the init itself makes activations grow by orders of magnitude
        # through the layers (the init is the same in every precision).
        exploding_init = growth is not None and growth > limit_growth
        early_fail = [r for r in runs if r.first_nonfinite and r.first_nonfinite.step <= r.start_step + 1
                      and r.first_nonfinite.phase in ("forward", "loss", "backward")
                      and (exploding_init or not (is_16bit(r.precision)
                                                  and fails_only_in_16bit(ctx.trace, r.first_nonfinite)))]
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
