"""`--html FILE`: one self-contained, offline HTML report with interactive plots.

Charts are drawn by Plotly (plotly.js is inlined, so the file needs no network): it gives log
axes, hover values per module and zoom on models with thousands of layers without any
hand-written drawing code. The page records script errors and how many charts it drew in
`data-` attributes of <body>, which the browser test reads.
"""
from __future__ import annotations

import html
import json
from typing import Any, Optional

from .text import loss_trend, num, origin_sentence

FP16_MAX = 65504.0
COLORS = {"32-true": "#1f77b4", "16-mixed": "#d62728", "bf16-mixed": "#2ca02c", "16-true": "#ff7f0e",
          "bf16-true": "#9467bd"}


def _value(v: Any) -> Optional[float]:
    """Plot-ready number: the document's "NaN"/"Infinity" strings and non-positive values are gaps."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf"):
        return float(v)
    return None


def _positive(v: Any) -> Optional[float]:
    x = _value(v)
    return x if x is not None and x > 0 else None


def _figures(doc: dict[str, Any]) -> list[tuple[str, str, Any]]:
    import plotly.graph_objects as go

    figures = []
    event = doc.get("first_nonfinite")

    loss = go.Figure()
    for run in doc["runs"]:
        steps = list(range(run["start_step"], run["start_step"] + len(run["losses"])))
        loss.add_trace(go.Scatter(x=steps, y=[_positive(v) for v in run["losses"]], mode="lines+markers",
                                  name=run["precision"], line={"color": COLORS.get(run["precision"])}))
        bad = run.get("first_nonfinite")
        if bad:
            loss.add_vline(x=bad["step"], line_dash="dash", line_color=COLORS.get(run["precision"], "red"),
                           annotation_text=f"{run['precision']}: {bad['kind'].upper()} ({bad['phase']})",
                           annotation_position="top left")
    loss.update_layout(title="Loss per step (dashed: first non-finite value)", xaxis_title="step",
                       yaxis_title="loss", yaxis_type="log")
    figures.append(("loss", "Loss per step", loss))

    acts = go.Figure()
    grads = go.Figure()
    for precision, layers in doc.get("layers", {}).items():
        named = [row for row in layers if row["module"]]
        x = [row["module"] for row in named]
        acts.add_trace(go.Scatter(x=x, y=[_positive(r["act_max_abs"]) for r in named], mode="lines+markers",
                                  name=precision, line={"color": COLORS.get(precision)}))
        grads.add_trace(go.Scatter(x=x, y=[_positive(r["param_grad_norm_max"]) for r in named], mode="markers",
                                   name=precision, marker={"color": COLORS.get(precision)}))
    acts.add_hline(y=FP16_MAX, line_dash="dot", line_color="red", annotation_text="float16 max 65504")
    if event and event.get("module"):
        acts.add_vline(x=event["module"], line_dash="dash", line_color="black",
                       annotation_text=f"first {event['kind'].upper()}: {event['module']}")
    acts.update_layout(title="Max |activation| per layer, whole run", yaxis_type="log", yaxis_title="max |x|",
                       xaxis_title="module")
    grads.update_layout(title="Max parameter-gradient norm per layer", yaxis_type="log", yaxis_title="||grad||",
                        xaxis_title="module")
    figures.append(("activations", "Per-layer max |activation|", acts))
    figures.append(("gradients", "Per-layer gradient norm", grads))

    scale = go.Figure()
    scaled = [r for r in doc["runs"] if r["loss_scales"]]
    for run in scaled:
        steps = list(range(run["start_step"], run["start_step"] + len(run["loss_scales"])))
        scale.add_trace(go.Scatter(x=steps, y=[_positive(v) for v in run["loss_scales"]], mode="lines+markers",
                                   name=f"{run['precision']} scale", line={"shape": "hv"}))
        skipped = run["skipped_steps"]
        if skipped:
            scale.add_trace(go.Scatter(x=skipped, y=[_positive(run["loss_scales"][s - run["start_step"]]) for s in skipped],
                                       mode="markers", name="skipped step", marker={"symbol": "x", "size": 10, "color": "red"}))
    if not scaled:
        scale.add_annotation(text="no 16-mixed run with a GradScaler in this scan", showarrow=False,
                             xref="paper", yref="paper", x=0.5, y=0.5)
    scale.update_layout(title="GradScaler loss scale per step (x: skipped step)", yaxis_type="log",
                        xaxis_title="step", yaxis_title="scale")
    figures.append(("scale", "GradScaler scale", scale))

    norm = go.Figure()
    for run in doc["runs"]:
        steps = list(range(run["start_step"], run["start_step"] + len(run["grad_norms"])))
        norm.add_trace(go.Scatter(x=steps, y=[_positive(v) for v in run["grad_norms"]], mode="lines+markers",
                                  name=run["precision"], line={"color": COLORS.get(run["precision"])}))
    norm.update_layout(title="Total gradient norm per step", yaxis_type="log", xaxis_title="step")
    figures.append(("gradnorm", "Total gradient norm", norm))
    for _, _, fig in figures:
        fig.update_layout(template="plotly_white", height=380, margin={"l": 60, "r": 20, "t": 50, "b": 60},
                          legend={"orientation": "h", "y": -0.25})
    return figures


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def render_html(doc: dict[str, Any]) -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        from ..errors import InputError
        raise InputError("--html needs the plotly package: pip install 'nandoctor[html]' (or pip install plotly).") from None
    figures = _figures(doc)
    charts = []
    for div_id, heading, fig in figures:
        spec = json.dumps(fig.to_plotly_json(), default=str)
        charts.append(f'<section><h3>{_e(heading)}</h3><div id="{div_id}" class="chart"></div>'
                      f'<script>Plotly.newPlot("{div_id}", ...(function(f){{return [f.data, f.layout, '
                      f'{{responsive: true, displaylogo: false}}]}})({spec}));</script></section>')
    verdict = doc["verdict"]
    causes = []
    for i, c in enumerate(doc["causes"], 1):
        items = "".join(f"<li>{_e(e)}</li>" for e in c["evidence"] + c.get("experiments", []))
        where = f" <code>{_e(c['source'])}</code>" if c.get("source") else ""
        causes.append(f'<div class="cause {c["severity"]}"><h4>{i}. <code>{_e(c["id"])}</code> {_e(c["title"])}{where}'
                      f' <small>({c["severity"]}, confidence {c["confidence"]:.2f}'
                      f'{", confirmed" if c.get("confirmed") else ""})</small></h4><ul>{items}</ul>'
                      f'<p class="fix"><b>Fix:</b> {_e(c["fix"])}</p></div>')
    runs = "".join(f"<tr><td>{_e(r['precision'])}</td><td>{_e(r['status'])}</td><td>{r['steps_run']}/{r['steps_requested']}</td>"
                   f"<td>{_e(loss_trend(r))}</td><td>{len(r['skipped_steps'])}</td><td>{r['seconds']:.2f}s</td></tr>"
                   for r in doc["runs"])
    event = doc.get("first_nonfinite")
    code = f"<pre>{_e(event['source_code'])}</pre>" if event and event.get("source_code") else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>nandoctor: {_e(verdict)} — {_e(doc['model_file'])}</title>
<script>
window.__ndErrors = [];
window.addEventListener("error", function (e) {{ window.__ndErrors.push(String(e.message)); }});
</script>
<script>{get_plotlyjs()}</script>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
.verdict {{ display: inline-block; padding: .2em .7em; border-radius: 4px; color: white; font-weight: bold; }}
.pass {{ background: #2e7d32; }} .warn {{ background: #f9a825; }} .fail {{ background: #c62828; }}
.cause {{ border-left: 4px solid #999; padding: .2em 1em; margin: .8em 0; background: #fafafa; }}
.cause.error {{ border-color: #c62828; }} .cause.warning {{ border-color: #f9a825; }} .cause.info {{ border-color: #1565c0; }}
.fix {{ color: #1b5e20; }} table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ddd; padding: .3em .8em; }}
pre {{ background: #272822; color: #f8f8f2; padding: .6em; }} .chart {{ min-height: 380px; }}
</style></head>
<body data-charts-expected="{len(charts)}">
<h1>nandoctor <span class="verdict {verdict}">{verdict.upper()}</span></h1>
<p><code>{_e(doc['model_file'])}</code> · torch {_e(doc['environment']['torch'])} on {_e(doc['environment']['device'])}
 · {doc['seconds']:.1f}s · exit code {doc['exit_code']}</p>
<h2>First non-finite value</h2><p>{_e(origin_sentence(event))}</p>{code}
<h2>Causes</h2>{''.join(causes) or '<p>No findings.</p>'}
<h2>Runs</h2><table><tr><th>precision</th><th>status</th><th>steps</th><th>loss</th><th>skipped</th><th>time</th></tr>{runs}</table>
<h2>Plots</h2>
{''.join(charts)}
<script>
window.addEventListener("load", function () {{
  var drawn = document.querySelectorAll(".chart .main-svg").length ? 
    Array.prototype.filter.call(document.querySelectorAll(".chart"), function (c) {{ return c.querySelector(".main-svg"); }}).length : 0;
  document.body.setAttribute("data-charts-drawn", String(drawn));
  document.body.setAttribute("data-errors", JSON.stringify(window.__ndErrors));
}});
</script>
</body></html>
"""
