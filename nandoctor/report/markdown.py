"""`--format markdown`: for $GITHUB_STEP_SUMMARY and pull-request comments (scan, replay, postmortem)."""
from __future__ import annotations

from typing import Any

from .text import (symptom_lines, bundle_sentence, headline, library_line, loss_trend, nonfinite_tensors, num, origin_lines, ranks_sentence,
                   path_differences, subject, worst_layers)

BADGE = {"pass": "✅ PASS", "warn": "⚠️ WARN", "fail": "❌ FAIL"}
ICON = {"error": "❌", "warning": "⚠️", "info": "ℹ️"}
ROWS = 10


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _where(cause: dict[str, Any]) -> str:
    return cause.get("source") or (f"module `{cause['module']}`" if cause.get("module") else "")


def _causes(doc: dict[str, Any]) -> list[str]:
    if not doc["causes"]:
        return ["No findings.", ""]
    out = ["### Causes", "", "| # | severity | cause | confidence | where | title |", "|---|---|---|---|---|---|"]
    for i, c in enumerate(doc["causes"], 1):
        confidence = f"{c['confidence']:.2f}" + (" ✔ confirmed" if c.get("confirmed") else " ✘ refuted" if c.get("confirmed") is False else "")
        out.append(f"| {i} | {ICON[c['severity']]} {c['severity']} | `{c['id']}` | {confidence} | "
                   f"{_cell(_where(c))} | {_cell(c['title'])} |")
    out.append("")
    for i, c in enumerate(doc["causes"], 1):
        out.append(f"<details{' open' if i == 1 else ''}><summary><b>{i}. {c['id']}</b>: {_cell(c['title'])}</summary>")
        out.append("")
        out += [f"- {_cell(e)}" for e in c["evidence"]]
        out += [f"- experiment: {_cell(e)}" for e in c.get("experiments", [])]
        out += [f"- {_cell(line)}" for line in symptom_lines(c)]
        out += ["", f"**Fix:** {_cell(c['fix'])}", "", "</details>", ""]
    return out


def _scan(doc: dict[str, Any]) -> list[str]:
    out = [f"**First non-finite value:** {_cell(headline(doc))}"]
    event = doc.get("first_nonfinite")
    if event:
        _, user_code, _, _ = origin_lines(event)
        if user_code:
            out += ["", "```python", user_code, "```"]
        if library_line(event):
            out += ["", _cell(library_line(event) or "")]
    out.append("")
    out += _causes(doc)
    out += ["### Runs", "", "| precision | status | steps | loss | loss scale | skipped |", "|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        scale = f"{num(r['loss_scales'][0])} → {num(r['loss_scales'][-1])}" if r["loss_scales"] else ""
        out.append(f"| {r['precision']} | {r['status']} | {r['steps_run']}/{r['steps_requested']} | "
                   f"{_cell(loss_trend(r))} | {scale} | {len(r['skipped_steps'])} |")
    bundle = doc.get("bundle") or {}
    if bundle:
        out += ["", _cell(bundle_sentence(bundle))] + ([_cell(ranks_sentence(bundle))] if ranks_sentence(bundle) else [])
    differed = path_differences(doc)
    if differed:
        out += ["", "### Paths the replay took differently", "", "| where | recorded | replayed | why |", "|---|---|---|---|"]
        out += [f"| {_cell(where)} | {_cell(was)} | {_cell(now)} | {_cell(why)} |" for where, was, now, why in differed]
    history = doc.get("history")
    if history:
        out += ["", f"Replayed from a recorded history window of {len(history)} entries."]
    close = worst_layers(doc, "fp16_headroom", reverse=False)
    if close:
        out += ["", "### Closest to float16 overflow", "", "| precision | module | type | max \\|act\\| | fp16 headroom |",
                "|---|---|---|---|---|"]
        for precision, row in close:
            out.append(f"| {precision} | `{row['module']}` | {row['type']} | {num(row['act_max_abs'])} | "
                       f"{num(row['fp16_headroom'])}x |")
    return out


def _postmortem(doc: dict[str, Any]) -> list[str]:
    out = [f"**What the checkpoint holds:** {_cell(headline(doc))}", ""]
    out += _causes(doc)
    bad = nonfinite_tensors(doc)
    shown = bad[:ROWS] or doc["tensors"][:ROWS]
    title = "Tensors holding NaN/Inf" if bad else "Largest tensors"
    out += [f"### {title}" + (f" ({len(shown)} of {len(bad)})" if len(bad) > len(shown) else ""), "",
            "| tensor | dtype | shape | NaN | Inf | max \\|x\\| |", "|---|---|---|---|---|---|"]
    for t in shown:
        out.append(f"| `{_cell(t['name'])}` | {t['dtype']} | {t['shape']} | {t['nan']} | {t['inf']} | {num(t['max_abs'])} |")
    opt = doc.get("optimizer_state")
    if opt and opt["tensors"]:
        out += ["", "### Optimizer state", "", "| parameter | state | NaN | Inf | negatives |", "|---|---|---|---|---|"]
        for o in opt["tensors"][:ROWS]:
            out.append(f"| `{_cell(o['param'])}` | {o['key']} | {o['nan']} | {o['inf']} | {o['negatives']} |")
    if doc.get("scaler"):
        out += ["", f"GradScaler: scale {num(doc['scaler'].get('scale'))}, growth tracker {doc['scaler'].get('_growth_tracker')}"]
    if doc.get("baseline"):
        out += ["", f"### Largest changes since `{doc['baseline']['path']}`", "", "| tensor | relative change |", "|---|---|"]
        for c in doc["baseline"]["changes"][:ROWS]:
            out.append(f"| `{_cell(c['name'])}` | {num(c['relative_change'])} |")
    return out


def render(doc: dict[str, Any]) -> str:
    command = doc.get("command", "scan")
    out = [f"## nandoctor{'' if command == 'scan' else ' ' + command}: {BADGE[doc['verdict']]} — `{subject(doc)}`", ""]
    env = doc.get("environment", {})
    context = f"torch {env.get('torch')} on {env.get('device')}, {doc.get('seconds', 0.0):.1f}s"
    if command == "postmortem":
        context = f"{doc.get('format')} checkpoint, step {num(doc.get('step'))}, epoch {num(doc.get('epoch'))}; " + context
    out += [f"{context}; exit code {doc['exit_code']} (fail on {doc['fail_on']})", ""]
    out += _postmortem(doc) if command == "postmortem" else _scan(doc)
    return "\n".join(out) + "\n"
