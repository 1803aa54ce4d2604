"""Loss and gradient-norm spikes, from the numbers the watch already syncs every step.

A spike is a value far above the robust centre of a rolling window: (value - median) over
1.4826 * MAD (the MAD of a Gaussian scaled to its sigma), after a warm-up, and at least
`min_ratio` times the median. Only host floats are read here: no tensor, no extra transfer.

When a spike fires, `explain_spike` names the layer statistic that moved first: the watch
keeps references to the last steps' per-parameter gradient norms (tensors it computed anyway;
no copy, no sync); only on a spike are they read, grouped per module and compared with their
window medians.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..run.stats import as_vector
from ..trace.warnings import SPIKE_DEFAULTS, EarlyWarning, LayerMove

MAD_TO_SIGMA = 1.4826
MOVE_RATIO = 2.0        # a layer statistic at twice its window median has moved
# A spike whose statistic is back under min_ratio x its median within this many steps recovered.
RECOVERY_STEPS = 20
RING_STEPS = 16         # steps of per-parameter gradient norms kept for the explanation
# The median and MAD of a 64-step window barely move in a few steps: they are recomputed every
# REFRESH values, and a value under the cached limit needs no sort (most steps). A value at or
# over it is judged against fresh statistics.
REFRESH = 8


@dataclass
class Spike:
    statistic: str          # "loss" or "grad_norm"
    step: int
    value: float
    median: float
    sigma: float            # robust z-score; inf when the value is not finite

    @property
    def ratio(self) -> float:
        return self.value / self.median if self.median > 0 else math.inf

    def reason(self) -> str:
        if not math.isfinite(self.value):
            return f"{self.statistic} {self.value} after a window median of {self.median:.4g}"
        return (f"{self.statistic} {self.value:.4g} is {self.sigma:.1f} robust sigmas above its window median "
                f"{self.median:.4g} ({self.ratio:.3g}x)")


def watch_options(name: str, option: Any, defaults: dict[str, Any]) -> Optional[dict[str, Any]]:
    """A watch argument such as `spikes=` or `early_warnings=`: None/True (the defaults), False (off),
    or a dict of the defaults' keys. None when off."""
    if option is False:
        return None
    options = dict(defaults)
    if isinstance(option, dict):
        unknown = sorted(set(option) - set(defaults))
        if unknown:
            raise ValueError(f"{name}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(defaults)}")
        options.update(option)
    elif option not in (None, True):
        raise ValueError(f"{name} must be True, False or a dict of options, got {option!r}")
    return options if options["enabled"] else None


def spike_options(option: Any) -> Optional[dict[str, Any]]:
    """`watch(spikes=...)`: None/True (defaults), False (off), or a dict of SPIKE_DEFAULTS keys."""
    return watch_options("spikes", option, SPIKE_DEFAULTS)


class SpikeDetector:
    """Rolling median/MAD of the loss and the total gradient norm; `observe` once per checked step."""

    def __init__(self, window: int = 64, warmup: int = 20, threshold_sigma: float = 6.0, min_ratio: float = 1.5,
                 enabled: bool = True):
        self.window = max(4, int(window))
        self.warmup = max(1, int(warmup))
        self.threshold_sigma = float(threshold_sigma)
        self.min_ratio = float(min_ratio)
        self.series: dict[str, deque[float]] = {"loss": deque(maxlen=self.window),
                                                "grad_norm": deque(maxlen=self.window)}
        self.seen = 0
        self._limit: dict[str, tuple[float, int]] = {}     # statistic -> (cached spike limit, values since)
        self._open: list[Any] = []         # spike warnings still waiting for their statistic to fall back

    def track(self, warning: Any) -> None:
        """Follow a spike's warning until its statistic is back near the median it spiked from
        (`warning.recovered_after`) or RECOVERY_STEPS pass."""
        if warning.finite and warning.baseline is not None:
            self._open.append(warning)

    def _settle(self, step: int, values: dict[str, Optional[float]]) -> None:
        still = []
        for warning in self._open:
            value = values.get(warning.statistic)
            if step <= warning.step:
                still.append(warning)
            elif value is not None and math.isfinite(value) and value < self.min_ratio * warning.baseline:
                warning.recovered_after = step - warning.step
            elif step - warning.step < RECOVERY_STEPS:
                still.append(warning)
        self._open = still

    def observe(self, step: int, loss: float, grad_norm: float) -> Optional[Spike]:
        """The first spike of this step (the loss before the gradient norm), or None. A spike's
        value does not enter the window: the next steps are judged against the run's normal."""
        self.seen += 1
        if self._open:
            self._settle(step, {"loss": loss, "grad_norm": grad_norm})
        found = None
        for name, value in (("loss", loss), ("grad_norm", grad_norm)):
            if value is None or math.isnan(value):
                continue
            spike = self._judge(name, step, value) if self.seen > self.warmup else None
            if spike is None:
                if math.isfinite(value):
                    self.series[name].append(value)
            elif found is None:
                found = spike
        return found

    def _judge(self, name: str, step: int, value: float) -> Optional[Spike]:
        values = self.series[name]
        if len(values) < 4:
            return None
        cached = self._limit.get(name)
        if cached is not None and cached[1] < REFRESH and value < cached[0]:
            self._limit[name] = (cached[0], cached[1] + 1)
            return None
        ordered = sorted(values)
        median = _median(ordered)
        mad = _median(sorted(abs(v - median) for v in ordered))
        # A floor on the spread: a flat window (MAD 0) would make any change infinitely many sigmas.
        spread = max(MAD_TO_SIGMA * mad, 1e-3 * abs(median), 1e-12)
        limit = median + self.threshold_sigma * spread
        self._limit[name] = (max(limit, self.min_ratio * median) if median > 0 else limit, 0)
        sigma = (value - median) / spread if math.isfinite(value) else math.inf
        if sigma < self.threshold_sigma:
            return None
        if median > 0 and math.isfinite(value) and value < self.min_ratio * median:
            return None
        return Spike(name, step, value, median, sigma)


class GradientRing:
    """The last RING_STEPS steps' per-parameter gradient norms: references to the tensors the
    watch computed for its check (each step makes new ones), so keeping them costs no kernel."""

    def __init__(self, size: int = RING_STEPS):
        self.entries: deque[tuple[int, torch.Tensor]] = deque(maxlen=size)

    def add(self, step: int, norms: Any) -> None:
        # A vector, or GroupedNorms' tuple of scalars: stacked only when read (`host`).
        if norms is not None:
            self.entries.append((step, norms))

    def host(self) -> tuple[list[int], list[list[float]]]:
        """(steps oldest first, their norms): the slow path, read only when a spike fires."""
        entries = [(s, as_vector(t)) for s, t in self.entries]
        size = entries[-1][1].numel() if entries else 0
        kept = [(s, t) for s, t in entries if t.numel() == size]   # the parameter set may have changed
        if not kept:
            return [], []
        rows = torch.stack([t.detach().float().reshape(-1).to(kept[-1][1].device) for _, t in kept]).tolist()
        return [s for s, _ in kept], rows


def explain_spike(spike: Spike, ring: GradientRing, owners: list[str],
                  sampled: Optional[dict[tuple[str, str], list[tuple[int, float]]]] = None) -> list[LayerMove]:
    """Per-layer statistics at the spike step against their medians over the steps before it,
    the layer that moved first (earliest step above MOVE_RATIO x its median) first, then by how far
    it moved. `owners[i]` is the module of the ring's i-th parameter; `sampled` holds the early
    warnings' per-module series, (module, statistic) -> [(step, value)]."""
    steps, rows = ring.host()
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for step, row in zip(steps, rows):
        per_module: dict[str, float] = {}
        for owner, norm in zip(owners, row):
            if not math.isnan(norm):
                per_module[owner] = per_module.get(owner, 0.0) + norm * norm
        for module, square in per_module.items():
            series.setdefault((module, "grad_norm"), []).append((step, math.sqrt(square)))
    for key, points in (sampled or {}).items():
        series.setdefault(key, []).extend(points)
    moves = []
    for (module, statistic), points in series.items():
        points = sorted(p for p in points if p[0] <= spike.step)
        if len(points) < 3 or points[-1][0] < spike.step - RING_STEPS:
            continue
        earlier = sorted(v for _, v in points[:-1] if math.isfinite(v))
        if not earlier:
            continue
        median = _median(earlier)
        value = points[-1][1]
        if median <= 0 or not (value >= MOVE_RATIO * median or not math.isfinite(value)):
            continue
        first = points[-1][0]
        for step, v in reversed(points[:-1]):
            if v >= MOVE_RATIO * median or not math.isfinite(v):
                first = step
            else:
                break
        moves.append(LayerMove(module=module, statistic=statistic, value=value, median=median,
                               ratio=value / median if math.isfinite(value) else math.inf, first_step=first))
    moves.sort(key=lambda m: (m.first_step, -m.ratio))
    return moves[:5]


def spike_warning(spike: Spike, moved: list[LayerMove], action: str) -> EarlyWarning:
    return EarlyWarning(cause="loss-spike" if spike.statistic == "loss" else "grad-spike", step=spike.step,
                        statistic=spike.statistic, value=spike.value, baseline=spike.median,
                        ratio=spike.ratio if math.isfinite(spike.ratio) else None,
                        sigma=spike.sigma if math.isfinite(spike.sigma) else None,
                        finite=math.isfinite(spike.value), action=action, moved=moved)


def _median(ordered: list[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])
