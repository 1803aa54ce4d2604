"""`--format rich`: the console report for people (stderr-friendly, colours when a TTY)."""
from __future__ import annotations

import collections

import math
from typing import Any, Optional

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .text import (symptom_lines, bundle_sentence, headline, library_line, loss_trend, middle, num, origin_lines, origin_sentence,
                   path_differences, ranks_sentence, worst_layers)

VERDICT_STYLE = {"pass": "bold green", "warn": "bold yellow", "fail": "bold red"}
SHORT = {"precision", "status", "steps", "time", "NaN", "Inf", "dtype"}   # never split these cells
SEVERITY_STYLE = {"error": "red", "warning": "yellow", "info": "cyan"}


def _bar(value: float, lo: float, hi: float, width: int = 24) -> str:
    if not (value > 0 and hi > lo):
        return ""
    frac = (math.log10(value) - lo) / (hi - lo) if hi > lo else 1.0
    filled = max(1, min(width, round(frac * width)))
    return "█" * filled + "·" * (width - filled)


def _table(title: str, columns: tuple[str, ...], wrap: tuple[str, ...] = ()) -> Table:
    """A borderless table; columns named in `wrap` (module and tensor names) fold onto more lines
    instead of being cut, so a narrow terminal never loses a module's leaf name."""
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for col in columns:
        if col in wrap:
            table.add_column(col, overflow="fold", ratio=3)
        elif col in SHORT:
            table.add_column(col, no_wrap=True)
        else:
            table.add_column(col, overflow="fold")
    return table


def _name(name: str, console: Console, budget: Optional[int] = None) -> str:
    """A module or tensor path shortened in the middle to fit `budget` (default: a third of the
    console); the leaf always stays whole."""
    return middle(name, budget or max(16, console.width // 3))


def _layer_table(console: Console, title: str, value_columns: tuple[str, ...],
                 rows: list[tuple[str, dict[str, Any], list[str]]]) -> None:
    """Per-module rows. Below 100 columns the module name gets a line of its own, with precision
    and type under it, so a narrow terminal still shows the whole leaf name."""
    wide = console.width >= 100
    columns = ("precision", "module", "type", *value_columns) if wide else ("module", *value_columns)
    table = _table(title, columns, wrap=("module",))
    for precision, row, values in rows:
        name = _name(row["module"], console, None if wide else max(16, console.width - 34)) or "(root)"
        if wide:
            table.add_row(precision, name, row["type"], *values)
        else:
            table.add_row(Text(name) + Text(f"\n  {precision} · {row['type']}", style="dim"), *values)
    console.print(table)


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
        for line in symptom_lines(cause):
            console.print(f"   ↳ {line}", highlight=False, markup=False, style="dim")
        console.print(Text("   fix: ", style="bold green") + Text(cause["fix"]))


def print_postmortem(doc: dict[str, Any], console: Console) -> None:
    verdict = doc["verdict"]
    console.print(Text.assemble(("nandoctor postmortem ", "bold"), (verdict.upper(), VERDICT_STYLE[verdict]),
                                f"  {doc['checkpoint']}  ·  {doc['format']}  ·  step {num(doc['step'])}  ·  epoch {num(doc['epoch'])}"
                                f"  ·  {doc['seconds']:.1f}s"))
    console.print(Text(headline(doc), style="red" if doc["verdict"] == "fail" else "green"))
    _print_causes(doc["causes"], console)
    table = _table("Tensors, worst first", ("tensor", "dtype", "shape", "NaN", "Inf", "max |x|", "norm"), wrap=("tensor",))
    for t in doc["tensors"][:12]:
        style = "red" if t["nan"] or t["inf"] else None
        table.add_row(_name(t["name"], console), t["dtype"], str(t["shape"]), str(t["nan"]), str(t["inf"]), num(t["max_abs"]),
                      num(t["norm"]), style=style)
    console.print(table)
    if doc.get("scaler"):
        console.print(f"GradScaler: scale {num(doc['scaler'].get('scale'))}, growth tracker {doc['scaler'].get('_growth_tracker')}",
                      markup=False)
    if doc.get("baseline"):
        t = _table(f"Largest changes since {doc['baseline']['path']}", ("tensor", "relative change", "norm before",
                   "norm after"), wrap=("tensor",))
        for c in doc["baseline"]["changes"][:10]:
            t.add_row(_name(c["name"], console), num(c["relative_change"]), num(c["norm_before"]), num(c["norm_after"]))
        console.print(t)


def print_report(doc: dict[str, Any], console: Console) -> None:
    """The console report of any document: scan, replay or postmortem."""
    if doc.get("command") == "postmortem":
        print_postmortem(doc, console)
        return
    verdict = doc["verdict"]
    command = "" if doc.get("command", "scan") == "scan" else f"{doc['command']} "
    head = Text.assemble(("nandoctor ", "bold"), command, (verdict.upper(), VERDICT_STYLE[verdict]),
                         f"  {doc['model_file']}  ·  {doc['environment']['device']}  ·  torch {doc['environment']['torch']}"
                         f"  ·  {doc['seconds']:.1f}s")
    console.print(head)
    bundle = doc.get("bundle") or {}
    if bundle:
        console.print(Text(bundle_sentence(bundle), style="dim"))
    if ranks_sentence(bundle):
        console.print(Text(ranks_sentence(bundle), style="bold"))

    event = doc.get("first_nonfinite")
    if not event and doc["verdict"] == "fail":
        console.print(Text(headline(doc), style="red"))
    if event:
        # The user's line with the user's code; a library frame where the op ran is its own line.
        lines = [Text(origin_sentence(event))]
        _, user_code, _, _ = origin_lines(event)
        if user_code:
            lines.append(Text(f"    {user_code}", style="bold"))
        if library_line(event):
            lines.append(Text(library_line(event) or "", style="dim"))
        if event.get("forward_op"):
            lines.append(Text(f"gradient of forward call `{event['forward_op']}`"))
        for t in event.get("inputs", [])[:3]:
            if t["name"] == "scalar":
                # Values that entered the step non-finite were made by no op: its arguments
                # (split's size and dim) say nothing about them.
                if not event.get("entered_from"):
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

    table = _table("Runs", ("precision", "status", "steps", "loss", "loss scale / skips", "time"))
    for run in doc["runs"]:
        status_style = {"ok": "green", "nonfinite": "red", "error": "red"}.get(run["status"], "yellow")
        scale = ""
        if run["loss_scales"]:
            scale = f"{num(run['loss_scales'][0])} → {num(run['loss_scales'][-1])} / {len(run['skipped_steps'])} skipped"
        elif run.get("interventions"):       # a watch policy kept the run alive
            done = {"rollback": "rolled back", "skip": "skipped", "stop": "stopped"}
            counts = collections.Counter(done.get(i["policy"], i["policy"]) for i in run["interventions"])
            scale = ", ".join(f"{n} {what}" for what, n in counts.items())
        table.add_row(run["precision"], Text(run["status"], style=status_style),
                      f"{run['steps_run']}/{run['steps_requested']}", loss_trend(run), scale, f"{run['seconds']:.2f}s")
    console.print(table)

    for run in doc["runs"]:
        unfinished = run.get("unfinished_step")
        if unfinished:
            console.print(Text(f"The traced step did not end normally ({unfinished['reason']}: {unfinished['detail']}); "
                               f"diagnosed from the {unfinished['ops']:,} ops traced before that.", style="yellow"))
    differed = path_differences(doc)
    if differed:
        paths = _table("Paths the replay took differently", ("where", "recorded", "replayed", "why"), wrap=("why",))
        for where, was, now, why in differed:
            paths.add_row(where, was, now, why)
        console.print(paths)

    close = worst_layers(doc, "fp16_headroom", reverse=False)
    if close:
        bars = console.width >= 100
        values = [r["act_max_abs"] for _, r in close if isinstance(r["act_max_abs"], (int, float)) and r["act_max_abs"] > 0]
        lo = math.log10(min(values)) - 1 if values else 0
        hi = math.log10(max(max(values), 65504.0)) if values else 1
        _layer_table(console, "Closest to float16 overflow (max |activation|" + (", log scale)" if bars else ")"),
                     ("max |act|", "fp16 headroom") + (("",) if bars else ()),
                     [(p, r, [num(r["act_max_abs"]), f"{num(r['fp16_headroom'])}x"]
                       + ([_bar(r["act_max_abs"], lo, hi)] if bars else [])) for p, r in close])
    largest = worst_layers(doc, "param_grad_norm_max", reverse=True)
    if largest:
        _layer_table(console, "Largest parameter gradients", ("max grad norm", "max update ratio"),
                     [(p, r, [num(r["param_grad_norm_max"]), num(r["update_ratio_max"])]) for p, r in largest])
    if doc.get("experiments"):
        console.print(Text(f"{len(doc['experiments'])} confirming experiment(s) in {doc['experiments_seconds']:.1f}s",
                           style="dim"))
