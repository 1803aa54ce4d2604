"""Small text helpers shared by the text reporters (formatting only, no statistics)."""
from __future__ import annotations

import math
from typing import Any, Optional

from ..trace.numbers import num as format_number


def num(value: Any, digits: int = 2) -> str:
    return format_number(value, digits, missing="–")


def origin_lines(event: dict[str, Any]) -> tuple[Optional[str], Optional[str], Optional[str], Optional[str]]:
    """(the user's line, its code, the library line, its code) of an origin. The user's line is
    the place to look and to fix; a line of an installed package where the op ran (a Hugging
    Face model's loss) is detail, shown apart. A document from before `user_source_code` pairs a
    source that is the user's line with `source_code`."""
    user, source = event.get("user_source"), event.get("source")
    user_code = event.get("user_source_code")
    if user_code is None and user and user == source:
        user_code = event.get("source_code")
    library = source if source and source != user else None
    return user, user_code, library, event.get("source_code") if library else None


def origin_sentence(event: Optional[dict[str, Any]]) -> str:
    """One sentence for an origin, placed at the user's line (a library line is `library_line`)."""
    if not event:
        return "no non-finite value in any run"
    kind = "NaN" if event["kind"] == "nan" else "Inf"
    where, _, _, _ = origin_lines(event)
    parts = [f"{kind} born in {event['phase']} at step {event['step']} ({event['precision']})"]
    if event.get("op"):
        parts.append(f"op {event['op']}")
    if event.get("module"):
        parts.append(f"module `{event['module']}`")
    if event.get("parameter"):
        parts.append(f"parameter {event['parameter']}" + (f" ({event['state']})" if event.get("state") else ""))
    if event.get("tensor"):
        parts.append(f"tensor {event['tensor']} ({event.get('count')} elements)")
    if where:
        made = event.get("user_source_batch")
        parts.append(f"at {where}" + (f" (the line that made {made}, which the op read)" if made else ""))
    return ", ".join(parts)


def library_line(event: dict[str, Any]) -> Optional[str]:
    """'inside library code at FILE:LINE: CODE' when the origin's op ran in an installed package."""
    _, _, inside, inside_code = origin_lines(event)
    if not inside:
        return None
    return f"inside library code at {inside}" + (f": {inside_code}" if inside_code else "")


def symptom_lines(cause: dict[str, Any]) -> list[str]:
    """One line per consequence nested under a root cause: its id, title and first evidence."""
    return [f"symptom {s['id']}: {s['title']}" + (f" ({s['evidence'][0]})" if s.get("evidence") else "")
            for s in cause.get("symptoms") or []]


def loss_trend(run: dict[str, Any]) -> str:
    loss = run["loss"]
    if loss["first"] is None:
        return "–"
    return f"{num(loss['first'])} → {num(loss['last'])}"


def worst_layers(doc: dict[str, Any], key: str, reverse: bool, count: int = 5) -> list[tuple[str, dict[str, Any]]]:
    """The `count` modules with the most extreme `key`, each in its worst precision (root excluded)."""
    best: dict[str, tuple[str, dict[str, Any]]] = {}
    for precision, layers in doc.get("layers", {}).items():
        for row in layers:
            value = row.get(key)
            if not row["module"] or not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
                continue
            held = best.get(row["module"])
            if held is None or (value > held[1][key]) == reverse and value != held[1][key]:
                best[row["module"]] = (precision, row)
    rows = sorted(best.values(), key=lambda pr: pr[1][key], reverse=reverse)
    return rows[:count]


def subject(doc: dict[str, Any]) -> str:
    """What the report is about: the model file (scan, replay) or the checkpoint (postmortem)."""
    return doc.get("model_file") or doc.get("checkpoint") or "(unknown input)"


def nonfinite_tensors(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Postmortem: the tensors holding NaN/Inf, worst first (the document already orders them)."""
    return [t for t in doc.get("tensors", []) if t["nan"] or t["inf"]]


def postmortem_sentence(doc: dict[str, Any]) -> str:
    bad = nonfinite_tensors(doc)
    opt = (doc.get("optimizer_state") or {}).get("tensors", [])
    opt_bad = [o for o in opt if o["nan"] or o["inf"]]
    if not bad and not opt_bad:
        return "no tensor in the checkpoint holds NaN or Inf"
    parts = []
    if bad:
        worst = bad[0]
        parts.append(f"{len(bad)} of {len(doc['tensors'])} tensors hold NaN/Inf; worst {worst['name']} "
                     f"({worst['nan']} NaN, {worst['inf']} Inf of {worst['numel']})")
    if opt_bad:
        parts.append(f"{len(opt_bad)} optimizer state tensor(s) hold NaN/Inf")
    return "; ".join(parts)


def headline(doc: dict[str, Any]) -> str:
    """The one sentence a reader needs first: where the first NaN/Inf was born, or what the checkpoint holds."""
    if doc.get("command") == "postmortem":
        return postmortem_sentence(doc)
    if doc.get("first_nonfinite"):
        return origin_sentence(doc["first_nonfinite"])
    stopped = [r for r in doc.get("runs", []) if r.get("error")]
    if stopped:
        err = stopped[0]["error"]
        where = err.get("user_source") or err.get("source")
        return (f"the {stopped[0]['precision']} run stopped: {err['exc_type']}: {err['message']}"
                + (f" at {where}" if where else ""))
    skipped = [r for r in doc.get("runs", []) if r.get("skipped_steps")]
    if skipped:
        said = "; ".join(f"GradScaler skipped {len(r['skipped_steps'])} of {r['steps_run']} steps in {r['precision']}"
                         for r in skipped)
        return f"no loss or weight became NaN/Inf, but gradients did: {said}"
    return origin_sentence(None)


def cause_location(cause: dict[str, Any]) -> str:
    return cause.get("source") or (f"module {cause['module']}" if cause.get("module") else "")


def middle(name: str, width: int) -> str:
    """Abbreviate the middle of a dotted module path to about `width` characters, never its leaf:
    "encoder.layers.11.self_attn.out_proj" -> "encoder.….self_attn.out_proj". The first part is
    kept when it fits; a leaf longer than `width` is kept whole."""
    if len(name) <= width or "." not in name:
        return name
    parts = name.split(".")
    tail = [parts[-1]]
    for part in reversed(parts[1:-1]):            # as much of the end of the path as fits
        if len(parts[0]) + len(part) + len(".".join(tail)) + 4 > width:
            break
        tail.insert(0, part)
    if len(parts[0]) + len(".".join(tail)) + 3 <= width:
        return f"{parts[0]}.….{'.'.join(tail)}"
    return "…." + ".".join(tail)


def bundle_sentence(bundle: dict[str, Any]) -> str:
    """Replay documents: which crash bundle was replayed, and what the watched run saw."""
    if not bundle:
        return ""
    name = str(bundle.get("path", "")).rstrip("/").rsplit("/", 1)[-1]
    parts = [f"bundle {name}: the watched run's {bundle.get('check')} check fired at step {bundle.get('step')}"]
    if bundle.get("what"):
        parts[0] += f" ({bundle['what']})"
    if bundle.get("micro_batches") and bundle["micro_batches"] > 1:
        parts.append(f"{bundle['micro_batches']} micro-batches")
    if bundle.get("state") == "after-step":
        parts.append("state after the optimizer step")
    if bundle.get("size_bytes") is not None:
        took = bundle.get("write_seconds")
        parts.append(f"{bundle['size_bytes'] / 1e6:.2f} MB" + (f" written in {num(took)} s" if isinstance(took, (int, float)) else ""))
    return "; ".join(parts)


def ranks_sentence(bundle: dict[str, Any]) -> str:
    """Distributed replays: the rank replayed, and the rank(s) where the value was born."""
    ranks = (bundle or {}).get("distributed")
    if not ranks:
        return ""
    origin = ", ".join(map(str, ranks.get("origin_ranks") or [])) or "unknown"
    others = ", ".join(map(str, ranks.get("contaminated_ranks") or []))
    return (f"replayed rank {ranks.get('rank')} of {ranks.get('world_size')} ({ranks.get('kind')}); "
            f"NaN/Inf born on rank {origin}" + (f"; rank {others} only contaminated" if others else ""))


def path_differences(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(where, recorded, replayed, why) of every execution path a replay took differently from
    the recorded run (runs[].replay_paths.differences), in the order the trace gives."""
    from ..trace.paths import site_label
    rows = []
    for run in doc.get("runs", []):
        for d in (run.get("replay_paths") or {}).get("differences", []):
            rows.append((site_label(d["kind"], d["site"]), d["recorded"], d["replayed"], d.get("why") or ""))
    return rows
