"""Rules for checkpoints: pure functions of a PostmortemTrace. Their docstrings are the
`nandoctor explain ID` text for the ids only a checkpoint shows."""
from __future__ import annotations

import inspect as _inspect
import math
from typing import TYPE_CHECKING, Callable

from .diagnose.facts import num
from .diagnose.finding import Finding, Severity

if TYPE_CHECKING:
    from .postmortem import PostmortemTrace

HUGE_WEIGHT = 1e4      # |w| beyond this in a trained network means divergence (healthy weights are O(1))
COLLAPSED_SCALE = 1.0  # GradScaler starts at 65536; below 1 it has halved 16+ times: steps were being skipped


def param_nonfinite(trace: "PostmortemTrace") -> list[Finding]:
    """What it detects: parameters or buffers that hold NaN or Inf in a saved checkpoint.

    Why it produces NaN or Inf: once one update writes NaN into a weight, every forward pass
    through it is NaN; resuming from this checkpoint cannot recover.

    Evidence used: NaN/Inf counts of every tensor, grouped by module, worst first.

    How to fix: resume from an earlier checkpoint (compare with --baseline to see where the
    divergence started), then find the cause with `nandoctor scan model.py --checkpoint EARLIER`.

    Example: `layers.11.attn.out_proj.weight: 4096 NaN of 4096`.
    """
    bad = [t for t in trace.tensors if t.nan or t.inf]
    if not bad:
        return []
    modules = sorted({t.module for t in bad})
    evidence = [f"{t.name}: {t.nan} NaN, {t.inf} Inf of {t.numel}" + (f" in {'; '.join(s['label'] for s in t.shards)}" if t.shards else "")
                for t in bad[:6]]
    if len(bad) > 6:
        evidence.append(f"... {len(bad) - 6} more tensors")
    return [Finding("param-nonfinite", Severity.ERROR.value, 0.99,
                    f"{len(bad)} of {len(trace.tensors)} tensors hold NaN/Inf ({len(modules)} modules)", evidence,
                    "do not resume from this checkpoint: resume from an earlier one and run "
                    "`nandoctor scan model.py --checkpoint EARLIER` to find where the NaN is born",
                    module=modules[0] or None, explains_origin=True)]


def poisoned_optimizer_state(trace: "PostmortemTrace") -> list[Finding]:
    """What it detects: optimizer state that is non-finite or impossible: NaN/Inf in Adam's
    exp_avg / exp_avg_sq or SGD's momentum buffer, negative exp_avg_sq, or step counters that
    disagree between parameters.

    Why it produces NaN or Inf: one NaN gradient leaves exp_avg_sq NaN forever (it is a
    running average), so every later update of that parameter is NaN even after the data or
    the learning rate is fixed. Resuming with this state re-poisons healthy weights.

    Evidence used: NaN/Inf/negative counts of every optimizer state tensor and the `step`
    values of all parameters.

    How to fix: resume the weights but reset the optimizer state (skip
    `optimizer.load_state_dict`), or resume from an earlier checkpoint; guard against
    non-finite gradients (GradScaler, or skip the step when `torch.isfinite(grad_norm)` fails).

    Example: `exp_avg_sq of parameter 12: 768 NaN` while the weights are still finite.
    """
    findings = []
    bad = [o for o in trace.optimizer if o.nan or o.inf or (o.key == "exp_avg_sq" and o.negatives)]
    if bad:
        evidence = [f"{o.key} of parameter {o.param}: {o.nan} NaN, {o.inf} Inf"
                    + (f", {o.negatives} negative" if o.negatives and o.key == "exp_avg_sq" else "") for o in bad[:6]]
        weights_ok = not any(t.nan or t.inf for t in trace.tensors)
        if weights_ok:
            evidence.append("the weights themselves are still finite: the next update will poison them")
        findings.append(Finding("poisoned-optimizer-state", Severity.ERROR.value, 0.95,
                                f"optimizer state is poisoned in {len({o.param for o in bad})} parameter(s)", evidence,
                                "resume the weights but not the optimizer state (skip optimizer.load_state_dict), or "
                                "resume from an earlier checkpoint; skip steps whose gradient norm is not finite",
                                explains_origin=weights_ok))
    steps = sorted(set(trace.state_steps))
    if len(steps) > 1:
        findings.append(Finding("poisoned-optimizer-state", Severity.WARNING.value, 0.6,
                                f"optimizer step counters disagree ({num(steps[0])} to {num(steps[-1])})",
                                [f"per-parameter step values: {', '.join(num(s) for s in steps[:8])}"],
                                "parameters were added, frozen or skipped mid-run; check that the optimizer state "
                                "matches the model before resuming"))
    return findings


def scaler_collapsed(trace: "PostmortemTrace") -> list[Finding]:
    """loss-scale-collapse (documented with the scan rule): a saved GradScaler scale far below its start."""
    scaler = trace.scaler
    if not scaler or not isinstance(scaler.get("scale"), (int, float)):
        return []
    scale = float(scaler["scale"])
    if scale >= COLLAPSED_SCALE and math.isfinite(scale):
        return []
    return [Finding("loss-scale-collapse", Severity.ERROR.value, 0.85, f"GradScaler scale collapsed to {num(scale)}",
                    [f"saved scale {num(scale)} (it starts at 65536; each skipped step halves it), growth tracker "
                     f"{scaler.get('_growth_tracker')}"],
                    "steps were being skipped: find the overflowing layer with `nandoctor scan model.py --checkpoint "
                    f"{trace.path} --precision 16-mixed`, or train in bf16-mixed")]


def weight_blowup(trace: "PostmortemTrace") -> list[Finding]:
    """What it detects: finite weights of absurd magnitude (|w| above 1e4) in a checkpoint,
    and with --baseline the tensors whose values changed most since the earlier checkpoint.

    Why it produces NaN or Inf: weights that large make activations overflow float16 at once
    and float32 soon after; they are the footprint of a divergence (learning rate too high,
    exploding gradients) that has not produced NaN yet.

    Evidence used: max |w| per tensor, and the relative change ||w - w_baseline|| / ||w_baseline||.

    How to fix: resume from the baseline with a lower learning rate or gradient clipping;
    `nandoctor scan model.py --checkpoint BASELINE` confirms which.

    Example: `head.weight` max |w| 3.2e6 while every other layer stays below 2.
    """
    huge = [t for t in trace.tensors if t.max_abs is not None and t.max_abs > HUGE_WEIGHT and t.dtype.startswith(("float", "bfloat"))]
    findings = []
    if huge:
        huge.sort(key=lambda t: -(t.max_abs or 0))
        findings.append(Finding("weight-blowup", Severity.WARNING.value, 0.7,
                                f"{len(huge)} tensors hold weights above {num(HUGE_WEIGHT)}",
                                [f"{t.name}: max |w| {num(t.max_abs)}, norm {num(t.norm)}" for t in huge[:6]],
                                "the run was diverging: resume from an earlier checkpoint with a lower learning rate "
                                "or gradient clipping", module=huge[0].module or None))
    if trace.changes:
        top = trace.changes[:5]
        findings.append(Finding("weight-blowup", Severity.INFO.value, 0.5,
                                f"largest change since the baseline: {top[0]['name']} ({num(top[0]['relative_change'])}x)",
                                [f"{c['name']}: relative change {num(c['relative_change'])} (norm {num(c['norm_before'])} -> "
                                 f"{num(c['norm_after'])})" for c in top],
                                "the divergence started in the modules listed first; scan from the baseline to see why",
                                module=top[0]["name"].rpartition(".")[0] or None))
    return findings


def extreme_lr(trace: "PostmortemTrace") -> list[Finding]:
    """high-lr (documented with the scan rule): learning rates in param_groups that are non-finite, <= 0 or above 1."""
    bad = [g for g in trace.param_groups if isinstance(g.get("lr"), float)
           and (not math.isfinite(g["lr"]) or g["lr"] <= 0 or g["lr"] > 1.0)]
    if not bad:
        return []
    return [Finding("high-lr", Severity.WARNING.value, 0.6, f"extreme learning rate {num(bad[0]['lr'])} in the optimizer",
                    [f"param_group lr {num(g['lr'])}" for g in bad[:4]],
                    "check the scheduler: the saved learning rate is outside any sensible range")]


RULES: list[Callable[["PostmortemTrace"], list[Finding]]] = [param_nonfinite, poisoned_optimizer_state, scaler_collapsed,
                                                             weight_blowup, extreme_lr]
POSTMORTEM_DOCS: dict[str, str] = {
    "param-nonfinite": _inspect.cleandoc(param_nonfinite.__doc__ or ""),
    "weight-blowup": _inspect.cleandoc(weight_blowup.__doc__ or ""),
}


def diagnose_checkpoint(trace: "PostmortemTrace") -> list[Finding]:
    findings: list[Finding] = []
    for rule in RULES:
        findings.extend(rule(trace))
    return findings
