"""The watch's side of the policies (watcher/policies.py): what happens to a step that fired.

`KeepAlive` is owned by a `Watch`; the guard calls it at four points: at each step's check
(`begin_check`: release the last skip's freeze), after a healthy check (`healthy`: a rolling
copy when due), when a check fires (`act`, with the policy for non-finite values) and when the
spike detector fires (`Watch.handle_spike`, with the policy for spikes). It names the samples
(watcher/sample_blame.py), keeps the record of every intervention and appends it to the skip
list (watcher/skip_list.py).
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..run import stats
from .policies import RollbackKeeper, RollbackSettings, StepFreeze, gather_samples
from .sample_blame import blame_samples
from .skip_list import SkipList, skipped_samples

MAX_RECORDS = 256      # interventions kept in memory for the report (the skip list keeps them all)


class RollbackBudgetSpent(Exception):
    """Internal: the rollback budget is spent; the watch stops the run."""


class KeepAlive:
    def __init__(self, out: Path, on_nonfinite: str, on_spike: str, rollback: Any,
                 skip_list: Any = None, sample_loss: Optional[Callable[..., torch.Tensor]] = None):
        self.on_nonfinite = on_nonfinite
        self.on_spike = on_spike
        self.settings = RollbackSettings.of(rollback)
        self.uses_rollback = "rollback" in (on_nonfinite, on_spike)
        self.keeper = RollbackKeeper(self.settings, out / "rollback") if self.uses_rollback else None
        self.freeze = StepFreeze()
        self.skip_list = SkipList(out)
        self.resume_skip = skipped_samples(skip_list)      # samples an earlier run listed
        self.sample_loss = sample_loss
        self.enabled = True          # `nandoctor run` turns it off unless the user chose a policy
        self.aside: Callable[[], Any] = contextlib.nullcontext   # `nandoctor run`: keeps the re-run out of its window
        # `nandoctor run`: (sample_loss, batches) from the loss module the step called, or None.
        self.loss_source: Optional[Callable[[Any], Optional[tuple[Callable[..., torch.Tensor], list[Any]]]]] = None
        self.records: list[dict[str, Any]] = []     # every intervention (as in the skip list)
        self.blames: list[dict[str, Any]] = []      # per-sample re-runs: step, check, blame
        self.resume_skipped: list[int] = []         # steps skipped because an earlier list named their samples

    # ---- step boundaries ------------------------------------------------------------------------
    def begin_check(self, step: int) -> None:
        self.freeze.release(step)

    def listed(self, capture: Any) -> bool:
        """This step's batch holds a sample that the skip list of an earlier run names."""
        if not self.resume_skip or capture is None:
            return False
        return any(i in self.resume_skip for indices in capture.sample_indices if indices for i in indices)

    def healthy(self, watch: Any, step: int) -> None:
        if self.keeper is not None and watch.optimizer is not None:
            self.keeper.maybe_take(step, watch)

    # ---- a firing -------------------------------------------------------------------------------
    def blame(self, watch: Any, check: str, capture: Any, statistic: str = "") -> Optional[dict[str, Any]]:
        """Name the samples of the fired step (slow path)."""
        if capture is None or not self.enabled:
            return None
        indices = list(capture.sample_indices)
        if check == "batch":
            found = _nonfinite_samples(capture, indices)
        else:
            watch._blaming = True
            try:
                with self.aside():
                    # DDP's own forward would expect a backward that never comes: its module runs alone.
                    model = watch.model.module if type(watch.model).__name__ == "DistributedDataParallel" \
                        else watch.model
                    sample_loss, batches = self.sample_loss, list(capture.batches)
                    source = self.loss_source(capture) if self.loss_source is not None and sample_loss is None else None
                    if source is not None:
                        sample_loss, batches = source
                    found = blame_samples(model, list(capture.calls), batches, indices, sample_loss,
                                          gradients="grad" in statistic, params=watch.params())
            finally:
                watch._blaming = False
        if found is not None:
            self.blames.append({"step": capture.step, "check": check, **_summary(found)})
            del self.blames[:-MAX_RECORDS]
        return found

    def can_continue(self, check: str, step: int) -> bool:
        """Whether the policy for non-finite values will keep the run going after this firing."""
        if self.on_nonfinite == "skip":
            return check != "loss-scale"
        if self.on_nonfinite != "rollback" or self.keeper is None or check == "loss-scale":
            return False
        if self.keeper.used >= self.settings.budget:
            return False
        return check != "parameters" or self.keeper.choose(step) is not None

    def act(self, watch: Any, policy: str, check: str, reason: str, capture: Any,
            statistic: str = "") -> str:
        """Apply `policy` ("skip" or "rollback") to the fired step; returns what to add to the
        message. Raises RollbackBudgetSpent when no rollback is left."""
        step = capture.step if capture is not None else max(watch.step_index - 1, 0)
        if _only_received(watch, check):
            # Under torchrun a rank whose own batch, loss and local gradients stayed finite only
            # received the NaN through the collective: its samples are innocent.
            found, samples, rows = None, [], []
        else:
            found = self.blame(watch, check, capture, statistic)
            samples, rows = _named(found, capture)
        entry: dict[str, Any] = {"step": step, "policy": policy, "check": check, "reason": reason}
        note = ""
        if policy == "rollback":
            keeper = self.keeper
            assert keeper is not None
            chosen = keeper.choose(step)
            if chosen is None and check != "parameters" and keeper.used < self.settings.budget:
                # No copy yet, but the weights are still those the step started from: a skip is
                # the same as a rollback to them.
                policy = entry["policy"] = "skip"
            elif keeper.used >= self.settings.budget or chosen is None:
                why = (f"the rollback budget ({self.settings.budget}) is spent" if keeper.used >= self.settings.budget
                       else "no copy of the training state from before this step is kept yet")
                entry.update(policy="stop", note=why)
                self._record(watch, entry, samples, rows, found)
                raise RollbackBudgetSpent(why)
        if policy == "rollback":
            keeper.restore(chosen, watch, step)
            entry["window"] = {"from_step": chosen.step, "to_step": step}
            note = (f" Rolled back to the state before step {chosen.step} (rollback {keeper.used} of "
                    f"{self.settings.budget}); the batches of steps {chosen.step}..{step} are skipped.")
        else:
            note = " The optimizer step was skipped (optimizer state, scheduler and scaler untouched)."
        self.freeze.arm(step, watch.scheduler)
        self._record(watch, entry, samples, rows, found)
        if samples:
            note += f" Samples {_shown(samples)} appended to {self.skip_list.path}."
        return note

    def _record(self, watch: Any, entry: dict[str, Any], samples: list[int], rows: list[list[int]],
                found: Optional[dict[str, Any]]) -> None:
        merged, by_rank = gather_samples(watch, samples)
        entry["samples"] = merged
        if by_rank is not None:
            entry["rank_samples"] = by_rank
        if rows:
            entry["rows"] = rows
        if found is not None:
            entry["blame"] = _summary(found)
        rank = getattr(watch.distributed, "rank", 0) if watch.distributed is not None else 0
        self.skip_list.append(entry, write=rank == 0)
        self.records.append(entry)
        del self.records[:-MAX_RECORDS]
        del self.skip_list.entries[:-MAX_RECORDS]

    def close(self) -> None:
        self.freeze.release()
        if self.keeper is not None:
            self.keeper.close()


def _only_received(watch: Any, check: str) -> bool:
    guard = watch.distributed
    if guard is None or check == "spike" or getattr(guard, "table", None) is None:
        return False
    try:
        origin = guard.verdict().get("origin_ranks") or []
    except Exception:  # noqa: BLE001 - a verdict that cannot be read blames every rank's samples
        return False
    return bool(origin) and guard.rank not in origin


def _nonfinite_samples(capture: Any, indices: list[Optional[list[int]]]) -> Optional[dict[str, Any]]:
    samples = []
    for micro, batch in enumerate(capture.batches):
        known = indices[micro] if micro < len(indices) else None
        rows: set[int] = set()
        for _, t in stats.iter_tensors(batch):
            if (t.is_floating_point() or t.is_complex()) and t.dim() > 0 and t.numel():
                rows.update(stats.nonfinite_rows(t, limit=t.shape[0]))
        for row in sorted(rows):
            samples.append({"micro_batch": micro, "row": row, "score": math.inf,
                            "index": known[row] if known is not None and row < len(known) else None})
    if not samples:
        return None
    return {"statistic": "nonfinite_values", "method": "non-finite rows of the batch", "samples": samples,
            "median": math.nan, "mad": math.nan, "dominant": samples, "share": 1.0}


def _named(found: Optional[dict[str, Any]], capture: Any) -> tuple[list[int], list[list[int]]]:
    """(dataset indices, [micro_batch, row] pairs) of the samples to skip: the dominant ones when a
    few dominate, else every sample of the step (the whole window is what was skipped)."""
    chosen = found["dominant"] if found and found["dominant"] else None
    if chosen is not None:
        return (sorted({int(s["index"]) for s in chosen if s["index"] is not None}),
                [[s["micro_batch"], s["row"]] for s in chosen])
    every = [i for indices in (capture.sample_indices if capture is not None else []) if indices for i in indices]
    return sorted(set(int(i) for i in every)), []


def _summary(found: dict[str, Any]) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v
    dominant = [{"index": s["index"], "micro_batch": s["micro_batch"], "row": s["row"],
                 "score": plain(s["score"]), "nonfinite": not math.isfinite(s["score"])} for s in found["dominant"]]
    return {"statistic": found["statistic"], "method": found["method"], "samples": len(found["samples"]),
            "median": plain(found["median"]), "mad": plain(found["mad"]), "share": plain(found["share"]),
            "dominant": dominant}


def _shown(values: list[int], limit: int = 8) -> str:
    return ", ".join(str(v) for v in values[:limit]) + (f" and {len(values) - limit} more" if len(values) > limit else "")
