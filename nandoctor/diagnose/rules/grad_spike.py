"""A gradient-norm spike the watch saw: far above the run's recent gradient norms."""
from __future__ import annotations

from .base import SpikeRule


class GradSpike(SpikeRule):
    """What it detects: a step whose total gradient norm stands far above the norms of the steps
    before it: at least `spikes.threshold_sigma` robust sigmas above the median of the last
    `spikes.window` steps and `spikes.min_ratio` times that median, after `spikes.warmup` steps.
    The norm is the one the watch already computes and syncs every step.

    Why it produces NaN or Inf: one step with a gradient tens of times the usual moves the
    weights that far (Adam normalises it only after its second moment catches up); OLMo 2 traced
    such spikes to repeated n-grams in the data, Wortsman et al. (2023) to an Adam update-size
    anomaly 1-8 steps before a loss spike. Left alone, the spikes grow until a value overflows.

    Evidence used: the spike step, its gradient norm, the window median and the robust z-score,
    and the per-module gradient norms of the spike step against their window medians: the
    layer that moved first (the earliest to stand above 2x its median) is named.

    How to fix: clip gradients (`clip_grad_norm_(model.parameters(), 1.0)`); lower the learning
    rate or lengthen the warm-up; a smaller Adam eps (1e-8 rather than 1e-6) keeps updates small
    when the second moment is small. Skip the batch (`watch(..., on_spike="skip")`) when a few
    samples carry the spike.

    Example: step 233: grad_norm 84.2, 40 robust sigmas above its window median 1.9; moved first:
    grad_norm of `embed` (35x its median, from step 233).

    Thresholds: as `loss-spike`: `spikes.threshold_sigma` 6, `spikes.min_ratio` 1.5, `spikes.window`
    64, `spikes.warmup` 20; a layer has moved at 2x its window median. Confidence 0.6. Severity
    warning; info for spikes that stayed finite, were left alone and came
    back under `min_ratio` x its median within 20 steps, in a run that never went non-finite,
    or that such a run then trained 100 finite steps past with no further spike (a level it
    settled at).
    """

    id = "grad-spike"
    title = "the gradient norm spiked far above its recent values"
    mechanism_text = ""
    fix_text = ("Clip gradients (clip_grad_norm_(model.parameters(), 1.0)) and lower the learning rate or lengthen "
                "the warm-up; when a few samples carry the spike, skip them (watch(on_spike='skip')).")
