"""A layer whose largest activation dwarfs its RMS, and grows."""
from __future__ import annotations

from .base import EarlyWarningRule


class ActivationOutliers(EarlyWarningRule):
    """What it detects: a module whose output's max |x| / rms(x) passed
    `early_warnings.activation_outlier_ratio` (default 100) and grew at least
    `early_warnings.growth` times over the sampled steps.

    Why it produces NaN or Inf: a few features carrying values hundreds of times the rest
    (outlier features) dominate the next LayerNorm and attention scores; in 16-bit they are the
    first to overflow, and quantised or low-precision layers lose the rest of the signal.

    Evidence used: the module, its max/rms ratio at the sampled step and its trend.

    How to fix: lower the learning rate; add normalisation before the layer (pre-LN), weight
    decay, or clip the activations; keep that layer in float32.

    Example: step 300: act_outlier_ratio in `blocks.2.mlp` = 412; trend 8.1x its value at step 100.

    Thresholds: `early_warnings.activation_outlier_ratio` 100 (for n values max/rms is at most
    sqrt(n); Gaussian activations sit near 4-5) and `early_warnings.growth` 2x over the samples.
    Confidence 0.6.
    """

    id = "activation-outliers"
    title = "a layer's largest activations dwarf the rest and grow"
    mechanism_text = "overflow"
    fix_text = "Lower the learning rate; normalise the layer's input (pre-LN) or add weight decay; keep it in float32."
