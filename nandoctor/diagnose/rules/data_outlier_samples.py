"""A few samples carry a fired step: its spike or its NaN comes from them, not from the model."""
from __future__ import annotations

from ...trace.numbers import num
from ..finding import Finding, Severity
from .base import Context, Rule

# At most this share of a step's samples may "dominate" it (the watch's per-sample re-run
# already caps its outliers at a quarter of the batch); more would be a batch-wide effect.
MAX_DOMINANT_SHARE_OF_BATCH = 0.25
DONE = {"rollback": "rolled back", "skip": "skipped"}


class DataOutlierSamples(Rule):
    """What it detects: a step that spiked or went non-finite under `nandoctor.watch` (or
    `nandoctor run`, or a callback), whose per-sample re-run shows that a few samples carry it:
    their loss, gradient norm or output lies far above the rest of the batch, or they hold
    NaN/Inf.

    Why it produces NaN or Inf: one corrupt, mislabelled or extreme sample (a row scaled by
    1e30, a label from another dataset, a document of one repeated token) gives a loss and a
    gradient orders of magnitude above the others; averaged into the batch, it makes one
    update large enough to throw the weights out of their basin (a loss spike) or to overflow
    (NaN/Inf). The model and the learning rate are fine for the rest of the data.

    Evidence used: the watch re-runs the fired step one sample at a time (the `sample_loss` you
    gave it, a model output's `.loss`, or the largest output per sample), with the RNG and the
    model's buffers restored after; a sample dominates when its score lies more than 10 median
    absolute deviations above the batch's median (or is non-finite) and the dominant samples
    carry at least 80% of the batch's excess over the median. The DataLoader indices of the
    samples come from the sampler.

    How to fix: inspect the named dataset indices and repair or drop them (the skip list in the
    watch's output folder names them; `nandoctor.SkipListSampler` leaves them out on resume);
    filter such samples when loading (a range check, a label check, a repetition check); keep
    `on_nonfinite="rollback"` / `on_spike="skip"` on so one bad sample cannot end a long run.

    Example: a data stream whose batch at step 2 holds a row scaled by 1e30: its gradients
    overflow; the re-run names dataset index 22 with an output magnitude 1e29 times the median.

    Thresholds: 10 MADs (a robust z-score of about 6.7 sigma), an 80% share of the excess, at
    most a quarter of the batch. Confidence 0.85 for non-finite samples, else 0.75: a few
    samples standing out is measured, but a model can react to them because it is already
    fragile.
    """

    id = "data-outlier-samples"
    title = "a few samples carry the step's spike or NaN"
    experiments = {}

    def check(self, ctx: Context) -> list[Finding]:
        findings = []
        for run in ctx.trace.runs:
            blames = [b for b in run.sample_blame if b.dominant and b.samples
                      and len(b.dominant) <= max(1, int(b.samples * MAX_DOMINANT_SHARE_OF_BATCH))]
            if not blames:
                continue
            first = blames[0]
            nonfinite = any(s.nonfinite for s in first.dominant)
            named = [str(s.index) if s.index is not None else f"row {s.row}" for s in first.dominant]
            evidence = []
            for blame in blames[:4]:
                parts = [f"{'dataset index ' + str(s.index) if s.index is not None else 'row ' + str(s.row)}: "
                         + ("non-finite" if s.nonfinite else f"{blame.statistic} {num(s.score)}") for s in blame.dominant[:6]]
                median = f", batch median {num(blame.median)}" if blame.median is not None else ""
                share = (f"; {blame.share:.0%} of the excess over the median" if blame.share is not None and
                         not any(s.nonfinite for s in blame.dominant) else "")
                evidence.append(f"step {blame.step} ({blame.check}): {len(blame.dominant)} of {blame.samples} samples "
                                f"dominate, by {blame.method}: {'; '.join(parts)}{median}{share}")
            taken = [i for i in run.interventions if i.policy in ("skip", "rollback")]
            if taken:
                done = " and ".join(DONE[p] for p in sorted({i.policy for i in taken}))
                listed = sorted({x for i in taken for x in i.samples})
                evidence.append(f"the watch {done} {len(taken)} step(s): {', '.join(str(i.step) for i in taken[:8])}"
                                + (f"; skip_list.json names samples {', '.join(str(s) for s in listed[:12])}"
                                   if listed else ""))
            fix = (f"inspect and repair or drop dataset samples {', '.join(named[:8])}; resume with "
                   "`nandoctor.SkipListSampler(sampler, OUT)` to leave every listed sample out, and filter such "
                   "samples when loading")
            findings.append(Finding(self.id, Severity.WARNING.value if run.status == "ok" else Severity.ERROR.value,
                                    0.85 if nonfinite else 0.75,
                                    f"{len(first.dominant)} sample(s) carry step {first.step}'s "
                                    f"{'NaN/Inf' if nonfinite or first.check != 'spike' else 'spike'}: dataset "
                                    f"{'index' if len(named) == 1 else 'indices'} {', '.join(named[:8])}",
                                    evidence, fix, explains_origin=nonfinite, precisions=[run.precision]))
        return findings[:1]
