"""A loss spike the watch saw: far above the run's recent loss, finite or not."""
from __future__ import annotations

from .base import SpikeRule


class LossSpike(SpikeRule):
    """What it detects: a step whose loss stands far above the loss of the steps before it: at
    least `spikes.threshold_sigma` robust sigmas above the median of the last `spikes.window`
    steps (sigma = 1.4826 x the median absolute deviation) and `spikes.min_ratio` times that
    median, after `spikes.warmup` steps. The watch, `nandoctor run` and the Lightning and
    Hugging Face callbacks check every step, from the loss they already move to the host.

    Why it produces NaN or Inf: a spike is the visible end of an instability that started
    earlier (attention logits growing, Adam's second moment collapsing, a bad batch). The large
    gradients of the spike step move the weights far; the next spike is larger, and a run that
    keeps going overflows. Many spikes stay finite and the run recovers, having lost progress.

    Evidence used: the spike step, its loss, the window median and the robust z-score; and,
    for a spike that stayed finite, the per-layer statistics of the spike step against their
    window medians, naming the layer and statistic that moved first (per-module gradient norms
    over the last steps, and the sampled early warnings).

    How to fix: lower the learning rate or lengthen the warm-up; clip gradients
    (`torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)`); when the layer that moved first
    is an attention module, add qk-norm (LayerNorm on queries and keys) or soft-cap the logits.
    `watch(..., on_spike="skip")` drops the spike step's update; "rollback" restores an earlier
    snapshot and skips the data window.

    Example: step 412: loss 9.8, 11.3 robust sigmas above its window median 2.41 (4.07x); moved
    first: grad_norm of `blocks.3.attn` (18x its median, from step 409).

    Thresholds: `spikes.threshold_sigma` 6 robust sigmas (OLMo-core's default; a Gaussian step exceeds
    it once in ~1e9), `spikes.min_ratio` 1.5x the median, `spikes.window` 64, `spikes.warmup` 20 steps.
    A layer has moved at 2x its window median. Confidence 0.6. Severity warning; info for
    spikes that stayed finite, were left alone and came back under
    `min_ratio` x its median within 20 steps, in a run that never went non-finite,
    or that such a run then trained 100 finite steps past with no further spike (a level it
    settled at).
    """

    id = "loss-spike"
    title = "the loss spiked far above its recent values"
    mechanism_text = ""
    fix_text = ("Lower the learning rate or lengthen the warm-up, and clip gradients "
                "(clip_grad_norm_(model.parameters(), 1.0)); if the layer that moved first is an attention "
                "module, add qk-norm or logit soft-capping. watch(on_spike='skip' or 'rollback') keeps the run alive.")
