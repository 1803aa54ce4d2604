"""`--format markdown`: for $GITHUB_STEP_SUMMARY and pull-request comments."""
from __future__ import annotations

from typing import Any

from .text import loss_trend, num, origin_sentence, worst_layers

BADGE = {"pass": "✅ PASS", "warn": "⚠️ WARN", "fail": "❌ FAIL"}
ICON = {"error": "❌", "warning": "⚠️", "info": "ℹ️"}


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(doc: dict[str, Any]) -> str:
    out = [f"## nandoctor: {BADGE[doc['verdict']]} — `{doc['model_file']}`", ""]
    out.append(f"torch {doc['environment']['torch']} on {doc['environment']['device']}, {doc['seconds']:.1f}s; "
               f"exit code {doc['exit_code']} (fail on {doc['fail_on']})")
    out.append("")
    event = doc.get("first_nonfinite")
    out.append(f"**First non-finite value:** {_cell(origin_sentence(event))}")
    if event and event.get("source_code"):
        out += ["", "```python", event["source_code"], "```"]
    out.append("")
    if doc["causes"]:
        out += ["### Causes", "", "| # | severity | cause | confidence | where | title |", "|---|---|---|---|---|---|"]
        for i, c in enumerate(doc["causes"], 1):
            confidence = f"{c['confidence']:.2f}" + (" ✔ confirmed" if c.get("confirmed") else "")
            out.append(f"| {i} | {ICON[c['severity']]} {c['severity']} | `{c['id']}` | {confidence} | "
                       f"{_cell(c['source'] or '')} | {_cell(c['title'])} |")
        out.append("")
        for i, c in enumerate(doc["causes"], 1):
            out.append(f"<details{' open' if i == 1 else ''}><summary><b>{i}. {c['id']}</b>: {_cell(c['title'])}</summary>")
            out.append("")
            out += [f"- {_cell(e)}" for e in c["evidence"]]
            out += [f"- experiment {_cell(e)}" for e in c.get("experiments", [])]
            out += ["", f"**Fix:** {_cell(c['fix'])}", "", "</details>", ""]
    out += ["### Runs", "", "| precision | status | steps | loss | loss scale | skipped |", "|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        scale = f"{num(r['loss_scales'][0])} → {num(r['loss_scales'][-1])}" if r["loss_scales"] else ""
        out.append(f"| {r['precision']} | {r['status']} | {r['steps_run']}/{r['steps_requested']} | "
                   f"{_cell(loss_trend(r))} | {scale} | {len(r['skipped_steps'])} |")
    close = worst_layers(doc, "fp16_headroom", reverse=False)
    if close:
        out += ["", "### Closest to float16 overflow", "", "| precision | module | type | max \\|act\\| | fp16 headroom |",
                "|---|---|---|---|---|"]
        for precision, row in close:
            out.append(f"| {precision} | `{row['module']}` | {row['type']} | {num(row['act_max_abs'])} | "
                       f"{num(row['fp16_headroom'])}x |")
    return "\n".join(out) + "\n"
