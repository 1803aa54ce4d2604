"""`--html FILE`: one self-contained, offline HTML page that tells the story of a report.

Story first: the verdict, where the first NaN/Inf was born (with the source lines around it),
the causes and their experiments, then the evidence: the module tree with the origin's path
marked, heat maps of layers × steps per precision, loss, float16 headroom, the GradScaler scale
and the gradient norm. The same page serves scan, replay (`command: "replay"`, optional
`history`) and postmortem documents. Charts are inline SVG (see svg.py), so the page needs no
script to draw; a small script only records script errors and how many charts drew, in `data-`
attributes of <body> that the browser test reads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from .svg import DASHES, MARKERS, Series, e, empty, hbars, heatmap, kind, line_chart
from .text import bundle_sentence, headline, library_line, loss_trend, num, origin_lines, origin_sentence, ranks_sentence, symptom_lines

FP16_MAX = 65504.0
COLORS = {"32-true": "#1f77b4", "16-mixed": "#d62728", "bf16-mixed": "#2ca02c", "16-true": "#ff7f0e",
          "bf16-true": "#9467bd", "64-true": "#8c564b"}
HEADROOM_ROWS = 30        # bars per precision in the float16 chart; the caption says how many are left out
TABLE_ROWS = 50


def _chart(chart_id: str, title: str, svg: str, caption: str = "") -> str:
    cap = f"<figcaption>{e(caption)}</figcaption>" if caption else ""
    return f'<figure class="chart" data-chart="{e(chart_id)}"><h3>{e(title)}</h3>{svg}{cap}</figure>'


def _style(precisions: list[str]) -> dict[str, tuple[str, str, str]]:
    fallback = ["#17becf", "#bcbd22", "#7f7f7f", "#e377c2"]
    return {p: (COLORS.get(p) or fallback[i % len(fallback)], DASHES[i % len(DASHES)], MARKERS[i % len(MARKERS)])
            for i, p in enumerate(precisions)}


def _same_as(runs: list[dict[str, Any]], key: str) -> dict[str, str]:
    """precision -> the earlier precision whose `key` series is identical (said in the legend)."""
    out: dict[str, str] = {}
    for i, run in enumerate(runs):
        for other in runs[:i]:
            if run[key] and run[key] == other[key] and run["start_step"] == other["start_step"]:
                out[run["precision"]] = other["precision"]
                break
    return out


# ----------------------------------------------------------------------------------- the story

def _source_context(event: dict[str, Any], radius: int = 3) -> str:
    """The lines around the user's failing line, read from the file when it exists, else the
    recorded line; a library line where the op ran follows as a detail of its own."""
    where, code, _, _ = origin_lines(event)
    code = code or ""
    detail = library_line(event)
    return _user_context(where, code, radius) + (f'<p class="where">{e(detail)}</p>' if detail else "")


def _user_context(where: Optional[str], code: str, radius: int) -> str:
    if where and ":" in where:
        file, _, line_text = where.rpartition(":")
        try:
            line = int(line_text)
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except (ValueError, OSError, UnicodeDecodeError):
            lines, line = [], 0
        if 0 < line <= len(lines):
            rows = []
            for n in range(max(1, line - radius), min(len(lines), line + radius) + 1):
                mark = ' class="hit"' if n == line else ""
                rows.append(f'<span{mark}><span class="ln">{n:>4}</span> {e(lines[n - 1])}</span>')
            return f'<p class="where"><code>{e(where)}</code></p><pre class="src">{"".join(rows)}</pre>'
    if code:
        return (f'<p class="where"><code>{e(where or "")}</code> (file not readable here; the recorded line)</p>'
                f'<pre class="src"><span class="hit">{e(code)}</span></pre>')
    return ""


def _origin(doc: dict[str, Any]) -> str:
    event = doc.get("first_nonfinite")
    failed = [r for r in doc.get("runs", []) if r["status"] in ("nonfinite", "error")]
    if not event:
        errors = [r for r in failed if r.get("error")]
        if errors:
            err = errors[0]["error"]
            return (f'<div class="origin bad"><p>The {e(errors[0]["precision"])} run stopped: '
                    f'<b>{e(err["exc_type"])}</b>: {e(err["message"])}</p>'
                    + _source_context({"user_source": err.get("user_source"), "source": err.get("source")}) + "</div>")
        if any(r["skipped_steps"] for r in doc.get("runs", [])):
            tone = "bad" if doc["verdict"] != "pass" else "ok"
            return f'<div class="origin {tone}"><p class="sentence">{e(headline(doc).capitalize())}.</p></div>'
        return '<div class="origin ok"><p>No run produced a NaN or Inf.</p></div>'
    parts = [f'<div class="origin bad"><p class="sentence">{e(origin_sentence(event))}</p>', _source_context(event)]
    facts = []
    if event.get("forward_op"):
        facts.append(f"gradient of the forward call <code>{e(event['forward_op'])}</code>")
    for t in event.get("inputs", [])[:3]:
        if t["name"] == "scalar":
            if not event.get("entered_from"):         # no op made values that entered non-finite
                facts.append(f"scalar argument {e(num(t['value']))}")
        else:
            facts.append(f"<code>{e(t['name'])}</code> {e(t['dtype'])}{e(t['shape'])}: min {e(num(t['min']))}, max "
                         f"{e(num(t['max']))}, zeros {t['zeros']}, negatives {t['negatives']}, NaN {t['nan']}, Inf {t['inf']}")
    if event.get("producer"):
        p = event["producer"]
        facts.append(f"its input was produced by <code>{e(p['op'])}</code>" + (f" at <code>{e(p['source'])}</code>" if p.get("source") else ""))
    if event.get("reproduced") is False:
        facts.append(f"<b>did not reproduce on replay</b>: {e(event.get('detail', ''))}")
    elif event.get("detail"):
        facts.append(e(event["detail"]))
    if facts:
        parts.append("<ul>" + "".join(f"<li>{f}</li>" for f in facts) + "</ul>")
    parts.append("</div>")
    return "".join(parts)


def _causes(doc: dict[str, Any]) -> str:
    out = []
    for i, c in enumerate(doc["causes"], 1):
        state = ", confirmed" if c.get("confirmed") else ", refuted" if c.get("confirmed") is False else ""
        where = f" <code>{e(c['source'])}</code>" if c.get("source") else ""
        evidence = "".join(f"<li>{e(x)}</li>" for x in c["evidence"])
        experiments = "".join(f"<li>⚗ {e(x)}</li>" for x in c.get("experiments", []))
        evidence += "".join(f"<li>↳ {e(x)}</li>" for x in symptom_lines(c))
        out.append(f'<div class="cause {e(c["severity"])}"><h4>{i}. <code>{e(c["id"])}</code> {e(c["title"])}{where} '
                   f'<small>({e(c["severity"])}, confidence {c["confidence"]:.2f}{state})</small></h4>'
                   f'<ul>{evidence}</ul>' + (f'<p><b>Experiments</b></p><ul class="exp">{experiments}</ul>' if experiments else "")
                   + f'<p class="fix"><b>Fix:</b> {e(c["fix"])}</p></div>')
    return "".join(out) or "<p>No findings.</p>"


def _experiments(doc: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{e(x.get('label') or x.get('id'))}</td><td>{e(x.get('precision'))}</td><td>{e(x.get('outcome'))}</td>"
                   f"<td>{e(x.get('steps_run'))}/{e(x.get('steps_planned'))}</td><td>{e(num(x.get('first_bad_step')))}</td>"
                   f"<td>{e(num(x.get('seconds')))}s</td></tr>" for x in doc.get("experiments", []))
    if not rows:
        return ""
    return ("<h2>Confirming experiments</h2><table><tr><th>change</th><th>precision</th><th>outcome</th><th>steps</th>"
            f"<th>first bad step</th><th>cost</th></tr>{rows}</table>")


def _runs_table(doc: dict[str, Any]) -> str:
    rows = "".join(f"<tr class=\"{e(r['status'])}\"><td>{e(r['precision'])}</td><td>{e(r['status'])}</td>"
                   f"<td>{r['steps_run']}/{r['steps_requested']}</td><td>{e(loss_trend(r))}</td>"
                   f"<td>{len(r['skipped_steps'])}</td><td>{r['seconds']:.2f}s</td><td>{e(r.get('note') or '')}</td></tr>"
                   for r in doc.get("runs", []))
    return ("<table><tr><th>precision</th><th>status</th><th>steps</th><th>loss</th><th>skipped</th><th>time</th>"
            f"<th>note</th></tr>{rows}</table>") if rows else "<p>No training runs in this report.</p>"


# -------------------------------------------------------------------------------- the evidence

def _module_tree(doc: dict[str, Any]) -> str:
    event = doc.get("first_nonfinite") or {}
    origin = event.get("module")
    layers = next(iter(doc.get("layers", {}).values()), [])
    if not layers:
        return "<p>No per-module data in this report.</p>"
    on_path = set()
    if origin:
        parts = origin.split(".")
        on_path = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    items = []
    for row in layers:
        name = row["module"]
        depth = 0 if not name else name.count(".") + 1
        leaf = name.rsplit(".", 1)[-1] if name else "(model)"
        cls = " origin" if name == origin and origin else " path" if name in on_path or (not name and origin) else ""
        flag = " ← first NaN/Inf here" if cls == " origin" else ""
        items.append(f'<div class="node{cls}" style="padding-left:{depth * 1.2:.1f}em"><code>{e(leaf)}</code> '
                     f'<small>{e(row["type"])}</small>{flag}</div>')
    if event and not origin:
        items.append(f'<div class="node origin"><code>(outside every module: {e(event.get("phase"))})</code>'
                     f' ← first NaN/Inf here</div>')
    opened = " open" if len(layers) <= 80 or origin else ""
    return f"<details{opened}><summary>{len(layers)} modules</summary><div class=\"tree\">{''.join(items)}</div></details>"


def _heatmaps(doc: dict[str, Any]) -> list[str]:
    event = doc.get("first_nonfinite") or {}
    runs = {r["precision"]: r for r in doc.get("runs", [])}
    charts = []
    for precision, layers in doc.get("layers", {}).items():
        run = runs.get(precision, {"start_step": 0, "steps_run": 0})
        n = max([len(l["act_max_abs_per_step"]) for l in layers] + [0])
        cols = list(range(run["start_step"], run["start_step"] + n))
        rows = [l["module"] or "(model)" for l in layers]
        outline = outline_col = None
        if event.get("precision") == precision and event.get("step") in cols:
            c = cols.index(event["step"])
            names = [l["module"] for l in layers]
            if event.get("module") and event["module"] in names:
                outline = (names.index(event["module"]), c)
            else:
                outline_col = c
        where = (f"; the outlined {'cell' if outline else 'step'} is where the first {event['kind'].upper()} was born"
                 + ("" if outline else f" (in {event.get('phase')}, outside every module)")) if (outline or outline_col is not None) else ""
        for key, title, what in (("act_max_abs_per_step", "max |activation|", "max |output| of each module"),
                                 ("param_grad_norm_per_step", "parameter-gradient norm", "L2 norm of each module's own parameter gradients")):
            values = [l[key] for l in layers]
            if key == "param_grad_norm_per_step":
                keep = [i for i, row in enumerate(values) if any(kind(v) != "missing" for v in row)]
                parameterless = len(rows) - len(keep)
            else:
                keep, parameterless = list(range(len(rows))), 0
            svg = heatmap([rows[i] for i in keep], cols, [values[i] for i in keep],
                          outline=(keep.index(outline[0]), outline[1]) if outline and outline[0] in keep else None,
                          outline_col=outline_col if outline_col is not None or (outline and outline[0] not in keep) else None,
                          empty_message=_no_data(run, f"no {title} was recorded for {precision}"))
            caption = f"{precision}: {what}, per step (log colour){where}."
            if parameterless:
                caption += f" {parameterless} module(s) without parameters left out."
            charts.append(_chart(f"heat-{key[:3]}-{precision}", f"{title} · {precision}", svg, caption))
    if not charts:
        charts.append(_chart("heat", "Layers × steps", empty("no per-layer series in this report (no run got past setup)")))
    return charts


def _no_data(run: dict[str, Any], default: str) -> str:
    if run.get("status") in ("nonfinite", "error") and run.get("steps_run", 0) <= 1:
        return f"{default}: the run stopped at its first step, before a full backward pass"
    return default


def _step_series(doc: dict[str, Any], key: str, flags: bool = False) -> list[Series]:
    runs = doc.get("runs", [])
    style = _style([r["precision"] for r in runs])
    same = _same_as(runs, key)
    out = []
    for run in runs:
        values = run[key]
        if not values:
            continue
        color, dash, marker = style[run["precision"]]
        event = run.get("first_nonfinite")
        out.append(Series(run["precision"], list(range(run["start_step"], run["start_step"] + len(values))), values,
                          color, dash, marker, note=f"same values as {same[run['precision']]}" if run["precision"] in same else "",
                          flags=[(event["step"], f"{run['precision']}: {event['kind'].upper()} in {event['phase']}")]
                          if flags and event else []))
    return out


def _loss_chart(doc: dict[str, Any]) -> str:
    series = _step_series(doc, "losses", flags=True)
    positive = all(kind(v) != "ok" or v > 0 for s in series for v in s.ys)
    svg = line_chart(series, x_label="step", y_label="loss", log_y=positive,
                     empty_message="no training step recorded a loss (every run stopped before its first loss)")
    return _chart("loss", "Loss per step", svg, "Crosses in the top band are steps whose loss was NaN or Inf; dashed "
                  "vertical lines mark each run's first non-finite value. Identical runs are drawn slightly apart.")


def _headroom_charts(doc: dict[str, Any]) -> list[str]:
    charts = []
    event = doc.get("first_nonfinite") or {}
    for precision, layers in doc.get("layers", {}).items():
        named = [l for l in layers if l["module"]] or layers
        ranked = sorted(named, key=lambda l: (kind(l["act_max_abs"]) == "ok", l["fp16_headroom"] if kind(l["fp16_headroom"]) == "ok" else 0))
        shown = ranked[:HEADROOM_ROWS]
        svg = hbars([l["module"] or "(model)" for l in shown], [l["act_max_abs"] for l in shown],
                    limit=(FP16_MAX, "float16 max 65504"), highlight=event.get("module"), x_label="max |activation| over the run",
                    empty_message=f"no activations were recorded for {precision}")
        caption = (f"{precision}: each module's largest |output| against float16's largest finite value; the gap is the "
                   f"headroom. NaN/Inf bars span the whole width.")
        if len(named) > len(shown):
            caption += f" Showing the {len(shown)} of {len(named)} modules closest to the limit; the heat maps show all."
        charts.append(_chart(f"headroom-{precision}", f"float16 headroom · {precision}", svg, caption))
    return charts


def _scale_chart(doc: dict[str, Any]) -> str:
    series = _step_series(doc, "loss_scales")
    for s in series:
        run = next(r for r in doc["runs"] if r["precision"] == s.name)
        skipped = run["skipped_steps"]
        # Label every skip when there are few; with many, one label and unlabelled lines.
        s.flags = [(step, "skipped" if len(skipped) <= 8 or i == 0 else "") for i, step in enumerate(skipped)]
        s.name = f"{s.name} ({len(run['skipped_steps'])} skipped)"
    svg = line_chart(series, x_label="step", y_label="loss scale",
                     empty_message="no 16-mixed run with a GradScaler in this report, so there is no loss scale to show")
    return _chart("scale", "GradScaler loss scale", svg, "Dashed lines mark steps the scaler skipped (inf/NaN gradients).")


def _gradnorm_chart(doc: dict[str, Any]) -> str:
    svg = line_chart(_step_series(doc, "grad_norms"), x_label="step", y_label="total gradient norm",
                     empty_message="no step completed a backward pass, so there is no gradient norm")
    return _chart("gradnorm", "Total gradient norm per step", svg)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return num(value) if isinstance(value, float) else str(value)


def _history(doc: dict[str, Any]) -> list[str]:
    """Replay documents: the recorded window of steps before the failure."""
    history = doc.get("history")
    if not history:
        return []
    entries = history if isinstance(history, list) else history.get("steps", []) if isinstance(history, dict) else []
    entries = [h for h in entries if isinstance(h, dict)]
    if not entries:
        return [_chart("history", "History window", empty("the replay recorded no history window"))]
    keys = [k for k in entries[0] if not isinstance(entries[0][k], (dict, list))][:10]
    head = "".join(f"<th>{e(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{e(_cell(h.get(k)))}</td>" for k in keys)
                   + "</tr>" for h in entries[-TABLE_ROWS:])
    out = []
    numeric = [k for k in keys if k != "step" and any(kind(h.get(k)) in ("ok", "nan", "inf") for h in entries)]
    if "step" in keys and numeric:
        steps = [h["step"] for h in entries]
        style = _style(numeric)
        series = [Series(k, steps, [h.get(k) for h in entries], *style[k]) for k in numeric[:4]]
        out.append(_chart("history", "History window before the failure",
                          line_chart(series, x_label="step", y_label="value", log_y=all(kind(v) != "ok" or v > 0 for s in series for v in s.ys)),
                          f"The last {len(entries)} recorded steps."))
    else:
        out.append(_chart("history", "History window", empty(f"{len(entries)} recorded entries, listed below")))
    out.append(f"<table><tr>{head}</tr>{body}</table>")
    return out


# ------------------------------------------------------------------------------------ postmortem

def _postmortem_body(doc: dict[str, Any]) -> str:
    modules = doc.get("modules", [])
    bad = [m for m in modules if m["nan"] or m["inf"]]
    values = ["NaN" if m["nan"] else "Infinity" if m["inf"] else m["max_abs"] for m in modules[:HEADROOM_ROWS]]
    caption = "Modules with NaN/Inf first (full-width bars), then by largest |weight|."
    if len(modules) > HEADROOM_ROWS:
        caption += f" Showing {HEADROOM_ROWS} of {len(modules)} modules; the table lists them all."
    chart = _chart("modules", "Largest |value| per module", hbars([m["module"] or "(top level)" for m in modules[:HEADROOM_ROWS]], values,
                   x_label="max |x| over finite values", empty_message="the checkpoint holds no tensors"), caption)
    mrows = "".join(f"<tr class=\"{'nonfinite' if m['nan'] or m['inf'] else ''}\"><td><code>{e(m['module'] or '(top level)')}</code></td>"
                    f"<td>{m['tensors']}</td><td>{m['nan']}</td><td>{m['inf']}</td><td>{e(num(m['max_abs']))}</td></tr>"
                    for m in modules)
    tensors = doc.get("tensors", [])
    trows = "".join(f"<tr class=\"{'nonfinite' if t['nan'] or t['inf'] else ''}\"><td><code>{e(t['name'])}</code></td>"
                    f"<td>{e(t['dtype'])}</td><td>{e(t['shape'])}</td><td>{t['nan']}</td><td>{t['inf']}</td>"
                    f"<td>{e(num(t['max_abs']))}</td><td>{e(num(t['norm']))}</td></tr>" for t in tensors[:TABLE_ROWS])
    more = f"<p>{len(tensors) - TABLE_ROWS} more tensors in the JSON report.</p>" if len(tensors) > TABLE_ROWS else ""
    parts = [f"<h2>What the checkpoint holds</h2><p>{len(tensors)} tensors in {len(modules)} modules; "
             f"{len(bad)} module(s) hold NaN/Inf.</p>", chart,
             "<h3>Per module</h3><div class=\"scroll\"><table><tr><th>module</th><th>tensors</th><th>NaN</th><th>Inf</th>"
             f"<th>max |x|</th></tr>{mrows}</table></div>",
             f"<h3>Tensors, worst first</h3><table><tr><th>tensor</th><th>dtype</th><th>shape</th><th>NaN</th><th>Inf</th>"
             f"<th>max |x|</th><th>norm</th></tr>{trows}</table>{more}"]
    opt = doc.get("optimizer_state")
    if opt:
        orows = "".join(f"<tr><td><code>{e(o['param'])}</code></td><td>{e(o['key'])}</td><td>{o['nan']}</td><td>{o['inf']}</td>"
                        f"<td>{o['negatives']}</td></tr>" for o in opt["tensors"][:TABLE_ROWS])
        parts.append("<h3>Optimizer state</h3>" + (f"<table><tr><th>parameter</th><th>state</th><th>NaN</th><th>Inf</th>"
                     f"<th>negatives</th></tr>{orows}</table>" if orows else "<p>No anomalies in the optimizer state.</p>")
                     + f"<p>step counters: {e(', '.join(num(s) for s in opt.get('steps', [])) or 'none')}</p>")
    if doc.get("scaler"):
        parts.append(f"<h3>GradScaler</h3><p>scale {e(num(doc['scaler'].get('scale')))}, growth tracker "
                     f"{e(doc['scaler'].get('_growth_tracker'))}</p>")
    if doc.get("baseline"):
        brows = "".join(f"<tr><td><code>{e(c['name'])}</code></td><td>{e(num(c['relative_change']))}</td>"
                        f"<td>{e(num(c['norm_before']))}</td><td>{e(num(c['norm_after']))}</td></tr>"
                        for c in doc["baseline"]["changes"][:TABLE_ROWS])
        parts.append(f"<h3>Largest changes since <code>{e(doc['baseline']['path'])}</code></h3><table><tr><th>tensor</th>"
                     f"<th>relative change</th><th>norm before</th><th>norm after</th></tr>{brows}</table>")
    return "".join(parts)


def _postmortem_origin(doc: dict[str, Any]) -> str:
    bad = [t for t in doc.get("tensors", []) if t["nan"] or t["inf"]]
    if not bad:
        return '<div class="origin ok"><p>No tensor in the checkpoint holds NaN or Inf.</p></div>'
    first = bad[0]
    return (f'<div class="origin bad"><p class="sentence">{len(bad)} tensor(s) hold NaN/Inf; the worst is '
            f'<code>{e(first["name"])}</code> ({first["nan"]} NaN, {first["inf"]} Inf of {first["numel"]} values).</p></div>')


# ------------------------------------------------------------------------------------------ page

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1000px; color: #222; padding: 0 1em; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
.verdict { display: inline-block; padding: .15em .7em; border-radius: 4px; color: white; font-weight: bold; }
.pass { background: #2e7d32; } .warn { background: #f9a825; } .fail { background: #c62828; }
.meta { color: #555; } .origin { padding: .4em 1em; border-radius: 4px; }
.origin.bad { background: #fff3f3; border-left: 5px solid #c62828; } .origin.ok { background: #f1f8f1; border-left: 5px solid #2e7d32; }
.sentence { font-size: 1.1em; font-weight: 600; }
pre.src { background: #272822; color: #f8f8f2; padding: .5em 0; overflow-x: auto; }
pre.src > span { display: block; padding: 0 .8em; } pre.src .hit { background: #7a1f1f; }
.ln { color: #888; user-select: none; }
.cause { border-left: 4px solid #999; padding: .2em 1em; margin: .8em 0; background: #fafafa; }
.cause.error { border-color: #c62828; } .cause.warning { border-color: #f9a825; } .cause.info { border-color: #1565c0; }
.fix { color: #1b5e20; } table { border-collapse: collapse; margin: .5em 0; font-size: .92em; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; } tr.nonfinite td, tr.error td { background: #fdecea; }
figure.chart { margin: 1em 0; } figure.chart h3 { margin: .2em 0; font-size: 1em; } figcaption { color: #555; font-size: .9em; }
.tree { font-size: .9em; max-height: 28em; overflow-y: auto; } .node.path code { color: #00838f; font-weight: bold; }
.node.origin { background: #e0f7fa; font-weight: bold; } .scroll { max-height: 24em; overflow-y: auto; }
svg.nd-chart { max-width: 100%; height: auto; font-family: system-ui, sans-serif; }
"""

CHECK = """<script>
window.addEventListener("load", function () {
  var charts = document.querySelectorAll("figure.chart");
  var drawn = 0;
  Array.prototype.forEach.call(charts, function (f) {
    var svg = f.querySelector("svg");
    if (svg && svg.getBBox().width > 0 && svg.childElementCount > 0) { drawn += 1; } else { f.setAttribute("data-broken", "1"); }
  });
  document.body.setAttribute("data-charts-drawn", String(drawn));
  document.body.setAttribute("data-errors", JSON.stringify(window.__ndErrors));
});
</script>"""


def render_html(doc: dict[str, Any]) -> str:
    command = doc.get("command", "scan")
    verdict = doc["verdict"]
    subject = doc.get("model_file") or doc.get("checkpoint") or ""
    env = doc.get("environment", {})
    meta = (f"{e(command)} of <code>{e(subject)}</code> · torch {e(env.get('torch'))} on {e(env.get('device'))} · "
            f"{doc.get('seconds', 0):.1f}s · exit code {doc['exit_code']} (fail on {e(doc['fail_on'])})")
    bundle = doc.get("bundle") or {}
    if command == "replay" and bundle:
        meta += "".join(f"<br>{e(line)}" for line in (bundle_sentence(bundle), ranks_sentence(bundle)) if line)
    if command == "postmortem":
        meta += f" · {e(doc.get('format'))}, step {e(num(doc.get('step')))}, epoch {e(num(doc.get('epoch')))}"
        body = [f"<h2>What is wrong</h2>{_postmortem_origin(doc)}", f"<h2>Causes</h2>{_causes(doc)}", _postmortem_body(doc)]
    else:
        charts = [_loss_chart(doc), *_heatmaps(doc), *_headroom_charts(doc), _scale_chart(doc), _gradnorm_chart(doc)]
        body = [f"<h2>Where the first NaN/Inf was born</h2>{_origin(doc)}",
                f"<h2>Causes</h2>{_causes(doc)}", _experiments(doc),
                f"<h2>Runs</h2>{_runs_table(doc)}", *(_history(doc) and ["<h2>History window (replay)</h2>", *_history(doc)]),
                f"<h2>Module tree</h2>{_module_tree(doc)}", "<h2>Evidence</h2>", *charts]
    notes = "".join(f"<li>{e(n)}</li>" for n in doc.get("notes", []))
    if notes:
        body.append(f"<h2>Notes</h2><ul>{notes}</ul>")
    page = "".join(body)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>nandoctor {e(command)}: {e(verdict)} — {e(subject)}</title>
<script>window.__ndErrors = []; window.addEventListener("error", function (ev) {{ window.__ndErrors.push(String(ev.message)); }});</script>
<style>{CSS}</style></head>
<body data-charts-expected="{page.count('<figure class="chart"')}" data-command="{e(command)}">
<h1>nandoctor <span class="verdict {e(verdict)}">{e(verdict.upper())}</span></h1>
<p class="meta">{meta}</p>
{page}
{CHECK}
</body></html>
"""
