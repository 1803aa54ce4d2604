"""Hand-written inline SVG charts for the HTML report: line charts, heat maps, horizontal bars.

Why not plotly: the full plotly.js bundle is 4.8 MB per report, places text on log axes in log
units (the float16 label never showed), and hides NaN/Inf as gaps. These few charts need log
axes, markers for non-finite values and tooltips (<title>), which SVG gives with no script and
no dependency. Every function returns one <svg> string, or an SVG that says in words why there
is nothing to draw. Values arrive as the document holds them: numbers, None (not recorded) or
the strings "NaN" / "Infinity" / "-Infinity".
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from .text import middle as _middle, num

NAN_COLOR = "#000000"
INF_COLOR = "#ff00aa"
MISSING_COLOR = "#eeeeee"
# Viridis, 9 stops: perceptually even, readable in grey and by most colour-blind readers.
VIRIDIS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"]
DASHES = ["", "6 3", "2 3", "8 3 2 3", "1 4"]
MARKERS = ["circle", "square", "diamond", "triangle", "cross"]


def e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def kind(value: Any) -> str:
    """'ok' for a finite number, 'nan', 'inf', or 'missing' (None / not a number)."""
    if isinstance(value, str):
        return "nan" if value == "NaN" else "inf" if value in ("Infinity", "-Infinity") else "missing"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "missing"
    if math.isnan(value):
        return "nan"
    return "inf" if math.isinf(value) else "ok"


DETAILED_CELLS = 2000     # up to this many cells, each has its own tooltip; beyond, colours are binned


def _cell_color(value: Any, lo: float, hi: float, exact: bool) -> str:
    k = kind(value)
    if k == "nan":
        return NAN_COLOR
    if k == "inf":
        return INF_COLOR
    if k == "missing" or value <= 0:
        return MISSING_COLOR
    frac = (math.log10(float(value)) - lo) / (hi - lo)
    return _ramp(frac if exact else round(frac * 31) / 31)


def _ramp(frac: float) -> str:
    frac = min(1.0, max(0.0, frac))
    pos = frac * (len(VIRIDIS) - 1)
    i = min(int(pos), len(VIRIDIS) - 2)
    t = pos - i
    a, b = VIRIDIS[i], VIRIDIS[i + 1]
    rgb = [round(int(a[k:k + 2], 16) * (1 - t) + int(b[k:k + 2], 16) * t) for k in (1, 3, 5)]
    return "#%02x%02x%02x" % tuple(rgb)


def empty(message: str, width: int = 900, height: int = 60) -> str:
    return (f'<svg class="nd-chart nd-empty" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
            f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="#fafafa" stroke="#ccc"/>'
            f'<text x="{width / 2}" y="{height / 2 + 5}" text-anchor="middle" fill="#555">{e(message)}</text></svg>')


@dataclass
class Series:
    name: str
    xs: Sequence[int]
    ys: Sequence[Any]
    color: str
    dash: str = ""
    marker: str = "circle"
    note: str = ""                    # shown in the legend, e.g. "same values as 32-true"
    flags: list[tuple[int, str]] = field(default_factory=list)   # (x, label): vertical markers at these x


def _ticks_log(lo: float, hi: float) -> list[float]:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    step = max(1, (b - a) // 6)
    ticks = [10.0 ** p for p in range(a, b + 1, step)]
    if b - a <= 2:      # less than two decades: 2 and 5 in between, so the axis has labels
        ticks = sorted(t * m for t in ticks for m in (1, 2, 5))
    return ticks


def tick(value: float) -> str:
    """Axis label: plain for 0.001..99999, else 1e7 / 2e-5 (no mixed formats on one axis)."""
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e5:
        return str(int(value)) if float(value).is_integer() else f"{value:.3g}"
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _ticks_lin(lo: float, hi: float) -> list[float]:
    span = hi - lo or 1.0
    raw = span / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int(span / step) + 2) if lo <= start + i * step <= hi]


def _marker(shape: str, x: float, y: float, color: str, r: float = 3.5) -> str:
    if shape == "square":
        return f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r}" height="{2 * r}" fill="{color}"/>'
    if shape == "diamond":
        return f'<path d="M{x:.1f} {y - r - 1:.1f}L{x + r + 1:.1f} {y:.1f}L{x:.1f} {y + r + 1:.1f}L{x - r - 1:.1f} {y:.1f}Z" fill="{color}"/>'
    if shape == "triangle":
        return f'<path d="M{x:.1f} {y - r - 1:.1f}L{x + r + 1:.1f} {y + r:.1f}L{x - r - 1:.1f} {y + r:.1f}Z" fill="{color}"/>'
    if shape == "cross":
        return (f'<path d="M{x - r:.1f} {y - r:.1f}L{x + r:.1f} {y + r:.1f}M{x - r:.1f} {y + r:.1f}L{x + r:.1f} {y - r:.1f}" '
                f'stroke="{color}" stroke-width="2"/>')
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{color}"/>'


def line_chart(series: list[Series], *, x_label: str, y_label: str, log_y: bool = True,
               hlines: Sequence[tuple[float, str]] = (), empty_message: str = "nothing to draw",
               width: int = 900, height: int = 300) -> str:
    """Lines per series; NaN and Inf values drawn as labelled markers in a band above the plot."""
    finite = [float(y) for s in series for y in s.ys if kind(y) == "ok" and (not log_y or y > 0)]
    nonfinite = [(s, x, kind(y)) for s in series for x, y in zip(s.xs, s.ys) if kind(y) in ("nan", "inf")]
    xs = [x for s in series for x in s.xs]
    if not xs or (not finite and not nonfinite):
        return empty(empty_message, width)
    ml, mr, mt, mb = 70, 20, 34, 40 + 18 * ((len(series) + 2) // 3)
    pw, ph = width - ml - mr, height - mt - mb
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y_values = finite + [v for v, _ in hlines]
    if log_y:
        y_values = [v for v in y_values if v > 0] or [1.0]
        lo, hi = min(y_values), max(y_values)
        lo, hi = (lo / 10, hi * 10) if lo == hi else (lo / 1.5, hi * 1.5)
        lo_t, hi_t = math.log10(lo), math.log10(hi)
        ymap = lambda v: mt + ph - (math.log10(v) - lo_t) / (hi_t - lo_t) * ph  # noqa: E731
        ticks = [t for t in _ticks_log(lo, hi) if lo <= t <= hi]
        if len(ticks) < 2:      # a narrow range: label the data's own extremes
            ticks = sorted(set(ticks + [min(finite or y_values), max(finite or y_values)]))
    else:
        y_values = y_values or [0.0]
        lo, hi = min(y_values), max(y_values)
        pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
        ymap = lambda v: mt + ph - (v - lo) / (hi - lo) * ph  # noqa: E731
        ticks = _ticks_lin(lo, hi)
    xmap = lambda x: ml + (x - x0) / (x1 - x0) * pw  # noqa: E731
    out = [f'<svg class="nd-chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
           f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="white" stroke="#bbb"/>']
    for t in ticks:
        y = ymap(t)
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{e(tick(t))}</text>')
    x_ticks = _ticks_lin(x0, x1) if x1 - x0 > 12 else list(range(int(x0), int(x1) + 1))
    for t in x_ticks:
        if float(t).is_integer():
            out.append(f'<text x="{xmap(t):.1f}" y="{mt + ph + 15}" text-anchor="middle" font-size="11">{int(t)}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{mt + ph + 30}" text-anchor="middle" font-size="12">{e(x_label)}</text>'
               f'<text x="14" y="{mt + ph / 2}" text-anchor="middle" font-size="12" '
               f'transform="rotate(-90 14 {mt + ph / 2})">{e(y_label)}{" (log)" if log_y else ""}</text>')
    for value, label in hlines:
        if log_y and value <= 0:
            continue
        y = ymap(value)
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c62828" stroke-dasharray="5 3"/>'
                   f'<text x="{ml + pw - 4}" y="{y - 4:.1f}" text-anchor="end" font-size="11" fill="#c62828">{e(label)}</text>')
    for s in series:
        for x, label in s.flags:
            px = xmap(x)
            out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{mt}" y2="{mt + ph}" stroke="{s.color}" stroke-dasharray="3 3"/>')
            if label:     # one label row per series, so runs failing at the same step stay readable
                out.append(f'<text x="{px + 3:.1f}" y="{mt + ph - 4 - 12 * series.index(s)}" font-size="10" '
                           f'fill="{s.color}">{e(label)}</text>')
    band = mt - 14
    if nonfinite:
        out.append(f'<text x="{ml - 10}" y="{band + 4}" text-anchor="end" font-size="10" fill="#a00">NaN/Inf</text>')
    n = max(1, len(series))
    for i, s in enumerate(series):
        # Identical series must not hide each other: a small per-series shift and distinct dashes/markers.
        shift = (i - (n - 1) / 2) * 2.0
        path, pen_up = [], True
        for x, y in zip(s.xs, s.ys):
            if kind(y) != "ok" or (log_y and y <= 0):
                pen_up = True
                continue
            path.append(f'{"M" if pen_up else "L"}{xmap(x):.1f} {ymap(float(y)) + shift:.1f}')
            pen_up = False
        if path:
            out.append(f'<path d="{" ".join(path)}" fill="none" stroke="{s.color}" stroke-width="1.8" '
                       f'stroke-dasharray="{s.dash}" opacity="0.9"/>')
        for x, y in zip(s.xs, s.ys):
            k = kind(y)
            if k == "ok" and (not log_y or y > 0):
                out.append(f'<g><title>{e(s.name)} step {x}: {e(num(y, 4))}</title>'
                           f'{_marker(s.marker, xmap(x), ymap(float(y)) + shift, s.color, 2.6 if len(s.xs) > 40 else 3.5)}</g>')
            elif k in ("nan", "inf"):
                label = "NaN" if k == "nan" else "Inf"
                px = xmap(x) + shift
                out.append(f'<g class="nd-nonfinite"><title>{e(s.name)} step {x}: {label}</title>'
                           f'{_marker("cross", px, band + i * 0.0, "#c62828" if k == "inf" else "#000", 4)}</g>')
    # Legend, below the plot.
    for i, s in enumerate(series):
        lx, ly = ml + (i % 3) * (pw / 3), mt + ph + 48 + 18 * (i // 3)
        out.append(f'<line x1="{lx:.0f}" x2="{lx + 26:.0f}" y1="{ly - 4}" y2="{ly - 4}" stroke="{s.color}" stroke-width="2" '
                   f'stroke-dasharray="{s.dash}"/>{_marker(s.marker, lx + 13, ly - 4, s.color)}'
                   f'<text x="{lx + 32:.0f}" y="{ly}" font-size="12">{e(s.name)}{(" — " + e(s.note)) if s.note else ""}</text>')
    out.append("</svg>")
    return "".join(out)


def heatmap(rows: list[str], cols: list[int], values: list[list[Any]], *, outline: Optional[tuple[int, int]] = None,
            outline_col: Optional[int] = None, empty_message: str = "nothing recorded", width: int = 900,
            unit: str = "") -> str:
    """Rows (modules) × columns (steps), log colour; NaN/Inf cells in their own colours, None grey.

    `outline` is (row, col) of the origin cell; `outline_col` outlines a whole step column
    (an origin outside every module). Large models get thin rows, never dropped ones.
    """
    cells = [(r, c, v) for r, row in enumerate(values) for c, v in enumerate(row)]
    finite = [float(v) for _, _, v in cells if kind(v) == "ok" and v > 0]
    if not rows or not cols or all(kind(v) == "missing" for _, _, v in cells):
        return empty(empty_message, width)
    label_w = min(300, 12 + 6.4 * max(len(r) for r in rows))
    row_h = 14 if len(rows) <= 40 else 8 if len(rows) <= 120 else max(2, 600 // len(rows))
    show_labels = row_h >= 8
    mt, mb = 22, 56
    pw = width - label_w - 20
    cw = min(pw / len(cols), 48.0)
    height = mt + row_h * len(rows) + mb
    lo, hi = (math.log10(min(finite)), math.log10(max(finite))) if finite else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    out = [f'<svg class="nd-chart nd-heatmap" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    detailed = len(cells) <= DETAILED_CELLS
    paths: dict[str, list[str]] = {}
    for r, row in enumerate(values):
        run_start, run_color = 0, None
        for c in range(len(row) + 1):
            color = _cell_color(row[c], lo, hi, detailed) if c < len(row) else None
            if detailed and c < len(row):
                v, k = row[c], kind(row[c])
                shown = {"nan": "NaN", "inf": "Inf", "missing": "not recorded"}.get(k) or num(v, 3)
                out.append(f'<rect x="{label_w + c * cw:.1f}" y="{mt + r * row_h}" width="{cw + 0.3:.1f}" height="{row_h}" '
                           f'fill="{color}"><title>{e(rows[r])} · step {cols[c]}: {e(shown)}</title></rect>')
                continue
            if detailed:
                continue
            # Large models: runs of equal colour along a row become one rectangle in one path per colour.
            if color != run_color:
                if run_color is not None:
                    x = label_w + run_start * cw
                    paths.setdefault(run_color, []).append(f"M{x:.1f} {mt + r * row_h}h{(c - run_start) * cw + 0.3:.1f}v{row_h}H{x:.1f}z")
                run_start, run_color = c, color
        if not detailed:
            out.append(f'<rect x="{label_w:.1f}" y="{mt + r * row_h}" width="{len(row) * cw:.1f}" height="{row_h}" fill="none" '
                       f'pointer-events="all"><title>{e(rows[r])}</title></rect>')
    for color, parts in paths.items():
        out.insert(1, f'<path fill="{color}" d="{"".join(parts)}"/>')
    if show_labels:
        for r, name in enumerate(rows):
            out.append(f'<text x="{label_w - 4:.0f}" y="{mt + r * row_h + row_h - 3}" text-anchor="end" '
                       f'font-size="{min(11, row_h - 1)}">{e(_middle(name, int(label_w / 6.4)))}</text>')
    else:
        out.append(f'<text x="{label_w - 4:.0f}" y="{mt + 10}" text-anchor="end" font-size="11">{len(rows)} modules,</text>'
                   f'<text x="{label_w - 4:.0f}" y="{mt + 24}" text-anchor="end" font-size="11">in model order</text>')
    every = max(1, len(cols) // 20)
    for c, step in enumerate(cols):
        if c % every == 0:
            out.append(f'<text x="{label_w + (c + 0.5) * cw:.1f}" y="{mt - 6}" text-anchor="middle" font-size="10">{step}</text>')
    if outline is not None:
        r, c = outline
        out.append(f'<rect class="nd-origin" x="{label_w + c * cw:.1f}" y="{mt + r * row_h - 1}" width="{cw:.1f}" '
                   f'height="{row_h + 2}" fill="none" stroke="#00e5ff" stroke-width="3"/>')
    if outline_col is not None:
        out.append(f'<rect class="nd-origin" x="{label_w + outline_col * cw:.1f}" y="{mt - 2}" width="{cw:.1f}" '
                   f'height="{row_h * len(rows) + 4}" fill="none" stroke="#00e5ff" stroke-width="3" stroke-dasharray="6 3"/>')
    # Colour legend.
    ly = mt + row_h * len(rows) + 16
    for i in range(40):
        out.append(f'<rect x="{label_w + i * 5}" y="{ly}" width="5.2" height="10" fill="{_ramp(i / 39)}"/>')
    out.append(f'<text x="{label_w}" y="{ly + 24}" font-size="11">{e(num(10 ** lo, 2))}</text>'
               f'<text x="{label_w + 200}" y="{ly + 24}" font-size="11" text-anchor="end">{e(num(10 ** hi, 2))}{e(unit)}</text>')
    for i, (color, label) in enumerate(((NAN_COLOR, "NaN"), (INF_COLOR, "Inf"), (MISSING_COLOR, "not recorded / 0"))):
        x = label_w + 230 + i * 110
        out.append(f'<rect x="{x}" y="{ly}" width="12" height="10" fill="{color}" stroke="#999"/>'
                   f'<text x="{x + 16}" y="{ly + 9}" font-size="11">{e(label)}</text>')
    if outline is not None or outline_col is not None:
        x = label_w + 230 + 3 * 110
        out.append(f'<rect x="{x}" y="{ly}" width="12" height="10" fill="none" stroke="#00e5ff" stroke-width="2"/>'
                   f'<text x="{x + 16}" y="{ly + 9}" font-size="11">origin</text>')
    out.append("</svg>")
    return "".join(out)


def hbars(labels: list[str], values: list[Any], *, limit: Optional[tuple[float, str]] = None,
          highlight: Optional[str] = None, x_label: str = "", empty_message: str = "nothing to draw",
          width: int = 900) -> str:
    """Horizontal bars on a log x axis (one per label); NaN/Inf bars drawn full width in their colour."""
    pairs = list(zip(labels, values))
    finite = [float(v) for _, v in pairs if kind(v) == "ok" and v > 0]
    if not pairs or (not finite and not any(kind(v) in ("nan", "inf") for _, v in pairs)):
        return empty(empty_message, width)
    label_w = min(320, 12 + 6.4 * max(len(l) for l in labels))
    bar_h = 16
    mt, mb = 10, 42
    pw = width - label_w - 80
    height = mt + bar_h * len(pairs) + mb
    scale_values = finite + ([limit[0]] if limit else [])
    lo = math.floor(math.log10(min(scale_values))) - 1 if scale_values else 0
    hi = math.ceil(math.log10(max(scale_values))) + 0.3 if scale_values else 1
    xmap = lambda v: label_w + (math.log10(v) - lo) / (hi - lo) * pw  # noqa: E731
    out = [f'<svg class="nd-chart nd-bars" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    for p in range(int(lo), int(hi) + 1):
        x = xmap(10.0 ** p)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + bar_h * len(pairs)}" stroke="#eee"/>'
                   f'<text x="{x:.1f}" y="{mt + bar_h * len(pairs) + 14}" text-anchor="middle" font-size="10">1e{p}</text>')
    for i, (label, v) in enumerate(pairs):
        y = mt + i * bar_h
        k = kind(v)
        bold = ' font-weight="bold" fill="#00838f"' if highlight is not None and label == highlight else ""
        out.append(f'<text x="{label_w - 4:.0f}" y="{y + bar_h - 4}" text-anchor="end" font-size="11"{bold}>'
                   f'{e(_middle(label, int(label_w / 6.4)))}</text>')
        if k == "ok" and v > 0:
            w = max(1.0, xmap(float(v)) - label_w)
            color = "#c62828" if limit and v >= limit[0] else "#1f77b4"
            out.append(f'<g><title>{e(label)}: {e(num(v, 4))}</title><rect x="{label_w}" y="{y + 2}" width="{w:.1f}" '
                       f'height="{bar_h - 4}" fill="{color}"/></g>'
                       f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 4}" font-size="10">{e(num(v, 2))}</text>')
        elif k in ("nan", "inf"):
            color = NAN_COLOR if k == "nan" else INF_COLOR
            out.append(f'<g><title>{e(label)}: {k}</title><rect x="{label_w}" y="{y + 2}" width="{pw}" height="{bar_h - 4}" '
                       f'fill="{color}" opacity="0.85"/></g><text x="{label_w + 4}" y="{y + bar_h - 4}" font-size="10" '
                       f'fill="white">{"NaN" if k == "nan" else "Inf"}</text>')
        else:
            out.append(f'<text x="{label_w + 4}" y="{y + bar_h - 4}" font-size="10" fill="#777">not recorded</text>')
    if limit:
        x = xmap(limit[0])
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt - 4}" y2="{mt + bar_h * len(pairs)}" stroke="#c62828" '
                   f'stroke-width="2" stroke-dasharray="5 3"/><text x="{x + 4:.1f}" y="{mt + bar_h * len(pairs) + 28}" '
                   f'font-size="11" fill="#c62828">{e(limit[1])}</text>')
    out.append(f'<text x="{label_w}" y="{height - 4}" font-size="11">{e(x_label)} (log)</text></svg>')
    return "".join(out)
