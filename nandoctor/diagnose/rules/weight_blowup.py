"""Finite weights of absurd magnitude in a checkpoint."""
from __future__ import annotations

from ...trace import PostmortemTrace
from ...trace.numbers import num
from ..finding import Finding, Severity
from .base import Context, Rule


HUGE_WEIGHT = 1e4      # |w| beyond this in a trained network means divergence (healthy weights are O(1))


class WeightBlowup(Rule):
    """What it detects: finite weights of absurd magnitude (|w| above 1e4) in a checkpoint,
    and with --baseline the tensors whose values changed most since the earlier checkpoint.

    Why it produces NaN or Inf: weights that large make activations overflow float16 at once
    and float32 soon after; they are the footprint of a divergence (learning rate too high,
    exploding gradients) that has not produced NaN yet.

    Evidence used: max |w| per tensor, and the relative change ||w - w_baseline|| / ||w_baseline||.

    How to fix: resume from the baseline with a lower learning rate or gradient clipping;
    `nandoctor scan model.py --checkpoint BASELINE` confirms which.

    Example: `head.weight` max |w| 3.2e6 while every other layer stays below 2.

    Thresholds: |w| above 1e4: trained weights are O(1) (init std ~1/sqrt(fan_in)). Confidence 0.7;
    0.5 for the baseline comparison (information).
    """

    id = "weight-blowup"
    title = "finite weights of absurd magnitude"

    def check(self, ctx: Context) -> list[Finding]:
        return []      # only a checkpoint shows it

    def check_checkpoint(self, trace: PostmortemTrace) -> list[Finding]:
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
