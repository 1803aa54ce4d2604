"""Checkpoint parameters or buffers holding NaN/Inf."""
from __future__ import annotations

from ...trace import PostmortemTrace
from ..finding import Finding, Severity
from .base import Context, Rule


class ParamNonfinite(Rule):
    """What it detects: parameters or buffers that hold NaN or Inf in a saved checkpoint.

    Why it produces NaN or Inf: once one update writes NaN into a weight, every forward pass
    through it is NaN; resuming from this checkpoint cannot recover.

    Evidence used: NaN/Inf counts of every tensor, grouped by module, worst first.

    How to fix: resume from an earlier checkpoint (compare with --baseline to see where the
    divergence started), then find the cause with `nandoctor scan model.py --checkpoint EARLIER`.

    Example: `layers.11.attn.out_proj.weight: 4096 NaN of 4096`.

    Thresholds: none; NaN/Inf counts are facts. Confidence 0.99.
    """

    id = "param-nonfinite"
    title = "parameters or buffers hold NaN/Inf"

    def check(self, ctx: Context) -> list[Finding]:
        return []      # only a checkpoint shows it

    def check_checkpoint(self, trace: PostmortemTrace) -> list[Finding]:
        bad = [t for t in trace.tensors if t.nan or t.inf]
        if not bad:
            return []
        modules = sorted({t.module for t in bad})
        evidence = [f"{t.name}: {t.nan} NaN, {t.inf} Inf of {t.numel}"
                    + (f" in {'; '.join(s['label'] for s in t.shards)}" if t.shards else "") for t in bad[:6]]
        if len(bad) > 6:
            evidence.append(f"... {len(bad) - 6} more tensors")
        return [Finding("param-nonfinite", Severity.ERROR.value, 0.99,
                        f"{len(bad)} of {len(trace.tensors)} tensors hold NaN/Inf ({len(modules)} modules)", evidence,
                        "do not resume from this checkpoint: resume from an earlier one and run "
                        "`nandoctor scan model.py --checkpoint EARLIER` to find where the NaN is born",
                        module=modules[0] or None, explains_origin=True)]
