"""Output logits drifting away from zero: log Z diverges."""
from __future__ import annotations

from .base import EarlyWarningRule


class OutputLogitDrift(EarlyWarningRule):
    """What it detects: the model's output logits (the final layer) drifting: max |logit| past
    `early_warnings.output_logit_max` (default 100), or |log Z| (the mean logsumexp over the last
    dimension) past `early_warnings.log_z_max` (default 30), growing at least
    `early_warnings.growth` times over the sampled steps.

    Why it produces NaN or Inf: cross-entropy is invariant to adding a constant to every logit,
    so nothing stops log Z from drifting; at high learning rates it runs away (Wortsman et al.
    2023, output-logit divergence). Large logits saturate the softmax, the loss stalls or
    spikes, and 16-bit logits overflow.

    Evidence used: the sampled max |logit| or log Z, its ratio to the first sample of the
    window and the log-linear slope.

    How to fix: add a z-loss (`loss = loss + 1e-4 * torch.logsumexp(logits, -1).pow(2).mean()`),
    soft-cap the output logits, lower the learning rate or add weight decay on the output layer;
    compute the loss in float32.

    Example: step 150: log_z = -46.1; trend 9.3x its value at step 0.

    Thresholds: `early_warnings.output_logit_max` 100, `early_warnings.log_z_max` 30 (a z-loss keeps
    log Z near 0), `early_warnings.growth` 2x over the samples. Confidence 0.6.
    """

    id = "output-logit-drift"
    title = "the output logits drift (log Z diverges)"
    mechanism_text = "overflow"
    fix_text = ("Add a z-loss (loss + 1e-4 * logsumexp(logits, -1)**2), soft-cap the output logits, lower the learning "
                "rate; compute the loss in float32.")
