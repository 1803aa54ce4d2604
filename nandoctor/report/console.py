"""`--format rich`: the console report for people (stderr-friendly, colours when a TTY)."""
from __future__ import annotations

import math
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .text import loss_trend, num, origin_sentence, worst_layers

VERDICT_STYLE = {"pass": "bold green", "warn": "bold yellow", "fail": "bold red"}
SEVERITY_STYLE = {"error": "red", "warning": "yellow", "info": "cyan"}


def _bar(value: float, lo: float, hi: float, width: int = 24) -> str:
    if not (value > 0 and hi > lo):
        return ""
    frac = (math.log10(value) - lo) / (hi - lo) if hi > lo else 1.0
    filled = max(1, min(width, round(frac * width)))
    return "█" * filled + "·" * (width - filled)


def _print_causes(causes: list[dict[str, Any]], console: Console) -> None:
    if causes:
        console.print(Text("Causes, most likely first", style="bold"))
    for i, cause in enumerate(causes, 1):
        style = SEVERITY_STYLE[cause["severity"]]
        title = Text.assemble(f"{i}. ", (f"[{cause['severity']}] ", style), (cause["id"], "bold"),
                              f"  {cause['title']}  (confidence {cause['confidence']:.2f}"
                              + (", confirmed" if cause.get("confirmed") else ", refuted" if cause.get("confirmed") is False else "")
                              + ")")
        console.print(title)
        if cause.get("source"):
            console.print(f"   where: {cause['source']}" + (f"  module `{cause['module']}`" if cause.get("module") else ""),
                          markup=False)
        for line in cause["evidence"]:
            console.print(f"   • {line}", highlight=False, markup=False)
        for line in cause.get("experiments", []):
            console.print(f"   ⚗ {line}", highlight=False, markup=False)
        console.print(Text("   fix: ", style="bold green") + Text(cause["fix"]))


def print_postmortem(doc: dict[str, Any], console: Console) -> None:
    verdict = doc["verdict"]
    console.print(Text.assemble(("nandoctor postmortem ", "bold"), (verdict.upper(), VERDICT_STYLE[verdict]),
                                f"  {doc['checkpoint']}  ·  {doc['format']}  ·  step {doc['step']}  ·  epoch {doc['epoch']}"
                                f"  ·  {doc['seconds']:.1f}s"))
    _print_causes(doc["causes"], console)
    table = Table(title="Tensors, worst first", title_justify="left", show_edge=False)
    for col in ("tensor", "dtype", "shape", "NaN", "Inf", "max |x|", "norm"):
        table.add_column(col)
    for t in doc["tensors"][:12]:
        style = "red" if t["nan"] or t["inf"] else None
        table.add_row(t["name"], t["dtype"], str(t["shape"]), str(t["nan"]), str(t["inf"]), num(t["max_abs"]),
                      num(t["norm"]), style=style)
    console.print(table)
    if doc.get("scaler"):
        console.print(f"GradScaler: scale {num(doc['scaler'].get('scale'))}, growth tracker {doc['scaler'].get('_growth_tracker')}",
                      markup=False)
    if doc.get("baseline"):
        t = Table(title=f"Largest changes since {doc['baseline']['path']}", title_justify="left", show_edge=False)
        for col in ("tensor", "relative change", "norm before", "norm after"):
            t.add_column(col)
        for c in doc["baseline"]["changes"][:10]:
            t.add_row(c["name"], num(c["relative_change"]), num(c["norm_before"]), num(c["norm_after"]))
        console.print(t)


def print_report(doc: dict[str, Any], console: Console) -> None:
    verdict = doc["verdict"]
    head = Text.assemble(("nandoctor ", "bold"), (verdict.upper(), VERDICT_STYLE[verdict]),
                         f"  {doc['model_file']}  ·  {doc['environment']['device']}  ·  torch {doc['environment']['torch']}"
                         f"  ·  {doc['seconds']:.1f}s")
    console.print(head)
    ranks = (doc.get("bundle") or {}).get("distributed")     # issue 12: the rank a replay ran, and the origin
    if ranks:
        origin = ", ".join(map(str, ranks.get("origin_ranks") or [])) or "unknown"
        others = ", ".join(map(str, ranks.get("contaminated_ranks") or []))
        console.print(Text(f"replayed rank {ranks.get('rank')} of {ranks.get('world_size')} ({ranks.get('kind')}); "
                           f"NaN/Inf born on rank {origin}" + (f"; rank {others} only contaminated" if others else ""),
                           style="bold"))

    event = doc.get("first_nonfinite")
    if event:
        lines = [Text(origin_sentence(event))]
        if event.get("source_code"):
            lines.append(Text(f"    {event['source_code']}", style="bold"))
        if event.get("forward_op"):
            lines.append(Text(f"gradient of forward call `{event['forward_op']}`"))
        for t in event.get("inputs", [])[:3]:
            if t["name"] == "scalar":
                lines.append(Text(f"scalar argument {num(t['value'])}"))
            else:
                lines.append(Text(f"{t['name']} {t['dtype']}{t['shape']}: min {num(t['min'])} max {num(t['max'])} "
                                  f"zeros {t['zeros']} negatives {t['negatives']} nan {t['nan']} inf {t['inf']}"))
        if event.get("producer"):
            p = event["producer"]
            lines.append(Text(f"input produced by {p['op']}" + (f" at {p['source']}" if p.get("source") else "")))
        if event.get("reproduced") is False:
            lines.append(Text("did NOT reproduce on replay: " + event.get("detail", ""), style="yellow"))
        elif event.get("detail"):
            lines.append(Text(event["detail"]))
        console.print(Panel(Group(*lines), title="first non-finite value", border_style="red"))

    _print_causes(doc["causes"], console)

    table = Table(title="Runs", title_justify="left", show_edge=False)
    for col in ("precision", "status", "steps", "loss", "loss scale / skips", "time"):
        table.add_column(col)
    for run in doc["runs"]:
        status_style = {"ok": "green", "nonfinite": "red", "error": "red"}.get(run["status"], "yellow")
        scale = ""
        if run["loss_scales"]:
            scale = f"{num(run['loss_scales'][0])} → {num(run['loss_scales'][-1])} / {len(run['skipped_steps'])} skipped"
        table.add_row(run["precision"], Text(run["status"], style=status_style),
                      f"{run['steps_run']}/{run['steps_requested']}", loss_trend(run), scale, f"{run['seconds']:.2f}s")
    console.print(table)

    close = worst_layers(doc, "fp16_headroom", reverse=False)
    if close:
        t = Table(title="Closest to float16 overflow (max |activation|, log scale)", title_justify="left", show_edge=False)
        for col in ("precision", "module", "type", "max |act|", "fp16 headroom", ""):
            t.add_column(col)
        values = [r["act_max_abs"] for _, r in close if isinstance(r["act_max_abs"], (int, float)) and r["act_max_abs"] > 0]
        lo = math.log10(min(values)) - 1 if values else 0
        hi = math.log10(max(max(values), 65504.0)) if values else 1
        for precision, row in close:
            t.add_row(precision, row["module"] or "(root)", row["type"], num(row["act_max_abs"]),
                      f"{num(row['fp16_headroom'])}x", _bar(row["act_max_abs"], lo, hi))
        console.print(t)
    largest = worst_layers(doc, "param_grad_norm_max", reverse=True)
    if largest:
        t = Table(title="Largest parameter gradients", title_justify="left", show_edge=False)
        for col in ("precision", "module", "type", "max grad norm", "max update ratio"):
            t.add_column(col)
        for precision, row in largest:
            t.add_row(precision, row["module"] or "(root)", row["type"], num(row["param_grad_norm_max"]),
                      num(row["update_ratio_max"]))
        console.print(t)
    if doc.get("experiments"):
        console.print(Text(f"{len(doc['experiments'])} confirming experiment(s) in {doc['experiments_seconds']:.1f}s",
                           style="dim"))
