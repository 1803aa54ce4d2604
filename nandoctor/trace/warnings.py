"""Early warnings: what a watched run showed before (or without) a NaN. Plain data, torch-free.

The watch (watcher/spikes.py, watcher/early_warnings.py) fills these; one rule per cause id in
diagnose/rules turns them into findings of severity warning. The defaults of the two config
sections live here so that `load/config.py` and the watch read one table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

# Spike detection on the loss and the total gradient norm (the numbers the watch already syncs
# every step). A robust z-score over a rolling window: (value - median) / (1.4826 * MAD).
SPIKE_DEFAULTS: dict[str, object] = {
    "enabled": True,
    "window": 64,              # steps of history the median and MAD are taken over
    "warmup": 20,              # steps before the first spike can be called (the early loss falls fast)
    # 6 robust sigmas: OLMo-core's default; a Gaussian step exceeds it once in ~1e9 draws.
    "threshold_sigma": 6.0,
    # ...and at least this multiple of the median, so that a window of near-identical values
    # (MAD ~ 0) does not call every wobble a spike.
    "min_ratio": 1.5,
}

# Early warnings, sampled every `every` steps (hooks exist only on those steps).
EARLY_WARNING_DEFAULTS: dict[str, object] = {
    "enabled": True,
    "every": 50,
    "samples": 8,                     # sampled steps a trend is read over
    # max |q.k| * scale of an attention module. Softmax turns a logit gap of 50 into e^50 ~ 5e21:
    # the attention is one-hot (entropy collapse), and float16 scores overflow at 65504.
    "attention_logit_max": 50.0,
    "output_logit_max": 100.0,        # max |logit| of the final layer (healthy classifiers: O(10))
    "log_z_max": 30.0,                # |log Z| of the final layer (z-loss keeps it near 0)
    "growth": 2.0,                    # a statistic this many times its earliest sample is growing
    "activation_outlier_ratio": 100.0,   # max|x| / rms(x) of one layer's output
    "second_moment_collapse": 0.5,    # share of exp_avg_sq below eps**2 in one layer
    "update_rms_ratio": 3.0,          # Adam update RMS this many times its window median
    "update_ratio_max": 0.1,          # ||dw|| / ||w|| of one layer in one step
}

# The early-warning cause ids (each a rule file in diagnose/rules).
SPIKE_CAUSES = ("loss-spike", "grad-spike")
WARNING_CAUSES = ("attention-logit-growth", "output-logit-drift", "adam-update-anomaly", "activation-outliers")


@dataclass
class LayerMove:
    """One layer statistic at the spike step against its median over the window before it."""
    module: str
    statistic: str                      # grad_norm, attention_logit_max, act_outlier_ratio, ...
    value: float
    median: float
    ratio: float                        # value / median
    first_step: int                     # the first step it stood above the move threshold


@dataclass
class EarlyWarning:
    """One warning: a cause id, where, which statistic, and how it moved over the window."""
    cause: str                          # loss-spike, grad-spike, attention-logit-growth, ...
    step: int
    statistic: str                      # loss, grad_norm, attention_logit_max, log_z, exp_avg_sq_collapse, ...
    value: float
    module: str = ""                    # "" for the whole model
    baseline: Optional[float] = None    # the window median (spikes) or the earliest sample (trends)
    ratio: Optional[float] = None       # value / baseline
    sigma: Optional[float] = None       # spikes: robust z-score
    slope: Optional[float] = None       # trends: log10 growth per 100 steps over the samples
    since_step: Optional[int] = None    # the first step of the window the trend is read over
    finite: bool = True                 # the spike's value stayed finite
    action: str = "warn"                # what the watch did: warn, skip, rollback
    # Spikes: steps until the statistic fell back under min_ratio x its window median; None when it
    # had not within RECOVERY_STEPS (or the run ended first). An isolated spike the run recovered
    # from is reported as info, not as a warning.
    recovered_after: Optional[int] = None
    # Spikes: the layer statistics that moved, the first mover first (item "which moved first").
    moved: list[LayerMove] = field(default_factory=list)
