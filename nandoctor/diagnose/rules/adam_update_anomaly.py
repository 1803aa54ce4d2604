"""Adam's update size out of line: second moment below eps**2, update RMS jumping, huge update ratios."""
from __future__ import annotations

from .base import EarlyWarningRule


class AdamUpdateAnomaly(EarlyWarningRule):
    """What it detects: on a sampled step (every `early_warnings.every` steps), one of: a module
    where more than `early_warnings.second_moment_collapse` of Adam's bias-corrected second
    moment sits below eps**2 (statistic `exp_avg_sq_collapse`; entries no gradient has reached yet,
    such as the embedding rows of tokens or positions no batch used, do not count); a module whose Adam update RMS,
    m / (sqrt(v) + eps), is `early_warnings.update_rms_ratio` times its median over the samples
    (`update_rms`); or a module whose step moved its weights by more than
    `early_warnings.update_ratio_max` of their norm (`update_ratio`, ||dw|| / ||w||).

    Why it produces NaN or Inf: when gradients stay tiny for a while, Adam's second moment
    falls below eps**2 and the update is m / eps; the next normal gradient then makes an update
    orders of magnitude larger than usual. Wortsman et al. (2023) found loss spikes follow such
    an update-size anomaly by 1-8 steps. An update ratio near 1 rewrites the layer each step.

    Evidence used: the module, the statistic, its value and its median or first sample.

    How to fix: a smaller eps (1e-8, or 1e-15 as in Wortsman et al.) so that the denominator
    follows the gradient; lower the learning rate or lengthen the warm-up; clip gradients.

    Example: step 0: update_ratio in `blocks.1.mlp.2` = 9.89 (lr 0.5 moves the layer ten times
    its own norm).

    Thresholds: `early_warnings.second_moment_collapse` 0.5 of a module's entries below eps**2,
    `early_warnings.update_rms_ratio` 3x the median update RMS, `early_warnings.update_ratio_max` 0.1
    (the `update_ratio_high` of the scan; healthy training sits near 1e-3); the first sampled step
    is not judged (Adam's first update is lr x sign(g) for every weight). Confidence 0.6.
    """

    id = "adam-update-anomaly"
    title = "the optimizer's update size is out of line"
    mechanism_text = ""
    fix_text = ("Lower the learning rate or lengthen the warm-up; use a smaller Adam eps (1e-8 or below) so the "
                "update follows the gradient; clip gradients.")
