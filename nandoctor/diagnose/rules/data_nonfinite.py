"""NaN/Inf in the training data."""
from __future__ import annotations

from ...trace import Phase
from ...trace.numbers import num
from ..facts import where
from ..finding import Finding, Severity
from .base import Context, Rule


class DataNonfinite(Rule):
    """What it detects: NaN or Inf in a batch's inputs or targets, including values produced by
    preprocessing inside `get_batch` (a log of a zero feature, a division by a zero std).

    Why it produces NaN or Inf: one NaN input makes every activation it touches NaN, the loss
    NaN, every gradient NaN, and after one optimizer step every weight NaN: the run is lost
    for good, even though the model is fine.

    Evidence used: per-step NaN/Inf counts of every batch tensor (checked before the forward
    pass), and the replay of `get_batch` that finds the op that created the value.

    How to fix: repair the data at its source (the reported line), drop or impute rows with
    `torch.isfinite(x).all(dim=-1)`, or guard the preprocessing (`clamp_min(eps)` before a log,
    `std + eps` in a division). As a last resort, `torch.nan_to_num` on the batch.

    Example: `x = torch.log(raw)` in get_batch with raw values of 0 gives -inf features.

    Thresholds: none; a NaN/Inf element in a batch is a fact. Confidence 0.95: the batch is checked
    before the forward pass, so nothing else can have made it.
    """

    id = "data-nonfinite"
    title = "NaN/Inf in the training data"
    experiments = {"sanitise-batch": "finite", "skip-batch": "finite"}

    def check(self, ctx: Context) -> list[Finding]:
        runs = [r for r in ctx.trace.runs if r.first_nonfinite and r.first_nonfinite.phase == Phase.DATA.value]
        if not runs:
            return []
        event = runs[0].first_nonfinite
        assert event is not None
        loc = where(event)
        evidence = [f"step {event.step}: {event.detail or f'{event.tensor}: {event.count} non-finite elements'}"]
        # A model file's get_batch made the batch (scan); a training script's loop passed it in
        # (`nandoctor run`, a replay): the op then is where the data entered, not where it was made.
        has_get_batch = "get_batch" in ctx.trace.functions
        if event.entered_from == "data" and loc:
            evidence.append(f"it entered the step at {loc} (`{loc.code}`), already non-finite: no op of the step made it")
            fix = (f"repair or drop those samples before they reach {loc} (`{loc.code}`): clean the dataset, or "
                   "filter each batch with `keep = torch.isfinite(t).all(dim=-1)`")
        elif event.op and loc:
            evidence.append(f"created by {event.op} at {loc}{' inside get_batch' if has_get_batch else ''}"
                            + (f" (input min {num(event.inputs[0].min)}, {event.inputs[0].zeros} zeros, "
                               f"{event.inputs[0].negatives} negatives)" if event.inputs else ""))
            fix = (f"repair the values at {loc}: `{loc.code}` produces them" if loc.code else f"repair the values at {loc}")
            fix += "; guard the op (e.g. `torch.log(x.clamp_min(1e-6))`)"
        elif loc:
            evidence.append(f"the batch reached the model at {loc} (`{loc.code}`)")
            fix = (f"repair or drop those samples before {loc} (`{loc.code}`): clean the dataset, or filter each "
                   "batch with `keep = torch.isfinite(x).all(dim=-1); x, y = x[keep], y[keep]`")
        else:
            fix = (f"filter batch {event.step} in get_batch; drop non-finite rows with `mask = "
                   "torch.isfinite(x).all(dim=-1); x, y = x[mask], y[mask]`" if has_get_batch else
                   "repair or drop those samples in the dataset, or filter each batch with `keep = "
                   "torch.isfinite(x).all(dim=-1); x, y = x[keep], y[keep]`")
        return [Finding(self.id, Severity.ERROR.value, 0.95, f"{event.tensor or 'a batch tensor'} holds "
                        f"{event.count} NaN/Inf values at step {event.step}", evidence, fix,
                        source=loc, precisions=[r.precision for r in runs], explains_origin=True)]
