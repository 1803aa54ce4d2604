"""Kept for callers of the old path: checkpoint checks now live with their cause's rule
(`nandoctor.diagnose.rules.<cause>`); `diagnose_checkpoint` runs them all."""
from __future__ import annotations

from . import diagnose_checkpoint

# Every cause id, checkpoint-only ones included, is a rule in the registry now, so no
# separate documentation is left here.
POSTMORTEM_DOCS: dict[str, str] = {}

__all__ = ["diagnose_checkpoint", "POSTMORTEM_DOCS"]
