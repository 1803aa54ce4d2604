"""Score nandoctor on the real-report corpus (sample_models/corpus/expected.yaml), per family.

    python3 bench/corpus_score.py                      # the whole corpus
    python3 bench/corpus_score.py --only ctc --only pow   # entries whose file name contains a word
    python3 bench/corpus_score.py --family masked-inf --json score.json --gaps gaps.md
    python3 bench/corpus_score.py --round 4            # one held-out round (entries with `round: 4`)

Per family: how many entries, top-1 cause right (the expected id or an accepted alternative),
top-3 right (the expected id among the first three and the listed top3 ids present), origin right
(phase, aten op when stated, and the marked source line), verdict right, and false alarms on
healthy models (a healthy model that did not get verdict pass). Entries that state `fail_step` (runs that go
non-finite late) are also checked for the step of the first non-finite value the tool reports. Uses only
the public API. Two more lines count how the findings read (issue 19): failing entries with more than one
`[error]` finding, and entries where a refuted finding ranks above an unrefuted one.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import yaml

import nandoctor

CORPUS = Path(__file__).resolve().parents[1] / "sample_models" / "corpus"
MARKER = "# nandoctor: origin"


def scan_kwargs(entry: dict[str, Any], experiments: Optional[bool] = None) -> dict[str, Any]:
    """The entry's CLI-style args as keyword arguments of nandoctor.scan (tests/test_corpus.py uses it too)."""
    args = list(entry.get("args") or [])
    kwargs: dict[str, Any] = {"experiments": bool(entry.get("experiments", False)) if experiments is None else experiments}
    precisions: list[str] = []
    while args:
        flag = args.pop(0)
        if flag in ("-p", "--precision"):
            precisions.append(args.pop(0))
        elif flag == "--steps":
            kwargs["steps"] = int(args.pop(0))
        elif flag == "--lr":
            kwargs["lr"] = float(args.pop(0))
        elif flag == "--seed":
            kwargs["seed"] = int(args.pop(0))
        else:
            raise ValueError(f"{entry['file']}: unsupported scan argument {flag!r} in expected.yaml")
    if precisions:
        kwargs["precisions"] = precisions
    return kwargs


def marked_line(name: str) -> Optional[int]:
    for number, line in enumerate((CORPUS / name).read_text().splitlines(), start=1):
        if MARKER in line:
            return number
    return None


def file_line(location: Optional[str]) -> Optional[str]:
    if not location:
        return None
    match = re.match(r"(.+):(\d+)$", location)
    return f"{Path(match.group(1)).name}:{match.group(2)}" if match else None


def origin_of(doc: dict[str, Any]) -> dict[str, Any]:
    event = doc.get("first_nonfinite")
    if event:
        return {"phase": event.get("phase"), "op": event.get("op"), "step": event.get("step"),
                "precision": event.get("precision"),
                "lines": sorted({x for x in (file_line(event.get("source")), file_line(event.get("user_source"))) if x})}
    for run in doc["runs"]:
        error = run.get("error")
        if error:
            return {"phase": error.get("phase"), "op": None, "step": None, "precision": run["precision"],
                    "lines": sorted({x for x in (file_line(error.get("source")), file_line(error.get("user_source"))) if x})}
    return {"phase": None, "op": None, "step": None, "precision": None, "lines": []}


# What a fix proposes, by the change an experiment can try: a fix whose text proposes a change
# that an experiment of the same report tried without removing the failure contradicts it.
PROPOSES = {
    "clip-grad": re.compile(r"clip_grad_norm_|clip gradients|`grad_clip: ", re.I),
    "raise-eps": re.compile(r"eps=|--adam_epsilon", re.I),
    "step-fp32": re.compile(r"in float32|x\.float\(\)|enabled=False", re.I),
    "step-bf16": re.compile(r"train in bf16|use bf16|bf16-mixed instead", re.I),
}
LOWER_LR = re.compile(r"lower the learning rate (?:from \S+ )?to ([0-9.]+(?:e[+-]?\d+)?)\b(?! \(untested)", re.I)


def fix_contradictions(doc: dict[str, Any]) -> list[str]:
    """Every fix (root causes and their symptoms) that proposes a change an experiment of the
    same document tried and that still failed: a lower learning rate at or above one that still
    went non-finite, clipping, a larger eps, float32 or bf16 that did not help."""
    refuted = [e for e in doc.get("experiments") or [] if e.get("outcome") == "nonfinite"]
    causes = [c for cause in doc["causes"] for c in [cause, *(cause.get("symptoms") or [])]]
    found = []
    for cause in causes:
        if cause.get("confirmed") is False:
            continue          # a refuted finding says its fix failed; its text is not advice
        fix = cause["fix"]
        for e in refuted:
            pattern = PROPOSES.get(e["id"])
            if pattern is not None and pattern.search(fix) and e.get("precision") in (cause.get("precisions") or [e.get("precision")]):
                found.append(f"{cause['id']}: fix proposes what '{e['label']}' ({e['id']}) refuted: {fix}")
        lowered = LOWER_LR.search(fix)
        if lowered:
            proposed = float(lowered.group(1))
            failed = [e for e in refuted if e["id"] == "lower-lr"]
            tried = [float(m.group(1)) for e in failed for m in [re.search(r"-> ([0-9.e+-]+)", e["label"])] if m]
            if any(proposed >= lr for lr in tried):
                found.append(f"{cause['id']}: proposes lr {proposed:g}, but lr {min(tried):g} still failed: {fix}")
    return found


def score_entry(entry: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    causes = [c["id"] for c in doc["causes"]]
    healthy = entry["verdict"] == "pass"
    origin = origin_of(doc)
    expected_origin = entry.get("origin")
    if healthy:
        top1 = top3 = not causes
    else:
        accepted = [entry["top_cause"], *(entry.get("also_top") or [])]
        top1 = bool(causes) and causes[0] in accepted
        top3 = any(c in accepted for c in causes[:3]) and set(entry.get("top3") or []) <= set(causes[:3])
    if expected_origin is None:
        origin_ok = doc.get("first_nonfinite") is None
    else:
        line = f"{entry['file']}:{marked_line(entry['file'])}"
        origin_ok = (origin["phase"] == expected_origin["phase"]
                     and (not expected_origin.get("op") or origin["op"] == expected_origin["op"])
                     and line in origin["lines"])
    broken = [r["precision"] for r in doc["runs"] if r["status"] in ("nonfinite", "error")]
    fail_step = entry.get("fail_step")
    return {"round": entry.get("round"), "fail_step": fail_step, "fail_precision": entry.get("fail_precision"),
            "step_ok": None if fail_step is None else origin["step"] == fail_step,
            "file": entry["file"], "family": entry["family"], "expected_verdict": entry["verdict"],
            "expected_top": entry.get("top_cause"), "expected_origin": expected_origin,
            "expected_line": marked_line(entry["file"]), "verdict": doc["verdict"], "causes": causes[:5],
            "origin": origin, "top1": top1, "top3": top3, "origin_ok": origin_ok,
            "verdict_ok": doc["verdict"] == entry["verdict"], "false_alarm": healthy and doc["verdict"] != "pass",
            "pass_despite_failure": bool(broken) and doc["verdict"] == "pass", "seconds": doc.get("seconds"),
            # issue 19: one error per root cause; a refuted finding never above an unrefuted one
            "errors": sum(c["severity"] == "error" for c in doc["causes"]),
            "refuted_above_unrefuted": any(a.get("confirmed") is False and b.get("confirmed") is not False
                                           for i, a in enumerate(doc["causes"]) for b in doc["causes"][i + 1:]),
            "findings": [{k: c.get(k) for k in ("id", "severity", "confidence", "title", "fix", "experiments",
                                                 "confirmed", "precisions")} for c in doc["causes"][:3]],
            "fix_contradictions": fix_contradictions(doc)}


def table(results: list[dict[str, Any]]) -> list[str]:
    families: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        families[r["family"]].append(r)
    rows = [f"{'family':<16} {'n':>3} {'top1':>5} {'top3':>5} {'origin':>6} {'verdict':>7} {'false_alarm':>11} {'pass_on_failure':>15}"]

    def row(name: str, rs: list[dict[str, Any]]) -> str:
        s = lambda k: sum(bool(r[k]) for r in rs)
        return (f"{name:<16} {len(rs):>3} {s('top1'):>5} {s('top3'):>5} {s('origin_ok'):>6} {s('verdict_ok'):>7} "
                f"{s('false_alarm'):>11} {s('pass_despite_failure'):>15}")
    for name in sorted(families):
        rows.append(row(name, families[name]))
    rows.append(row("TOTAL", results))
    return rows


def step_lines(results: list[dict[str, Any]]) -> list[str]:
    """Late failures: the step of the first non-finite value the tool reports vs the entry's fail_step."""
    late = [r for r in results if r["fail_step"] is not None]
    if not late:
        return []
    rows = [f"first non-finite step vs fail_step ({sum(bool(r['step_ok']) for r in late)}/{len(late)} right):"]
    for r in late:
        o = r["origin"]
        rows.append(f"  {r['file']:<36} expected step {r['fail_step']:>3}"
                    f"{' (' + r['fail_precision'] + ')' if r['fail_precision'] else ''}, tool: step {o['step']}"
                    f" ({o['precision']})")
    return rows


def finding_lines(results: list[dict[str, Any]]) -> list[str]:
    """How the findings read: several [error]s for one failing model, a refuted finding ranked high."""
    failing = [r for r in results if r["expected_verdict"] == "fail"]
    several = [r["file"] for r in failing if r["errors"] > 1]
    refuted = [r["file"] for r in results if r["refuted_above_unrefuted"]]
    return [f"failing entries with more than one [error] finding: {len(several)}/{len(failing)}"
            + (f" ({', '.join(several)})" if several else ""),
            f"entries with a refuted finding ranked above an unrefuted one: {len(refuted)}"
            + (f" ({', '.join(refuted)})" if refuted else "")]


def gaps_markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| file | expected (top cause; origin phase/op/line; verdict) | tool now (top cause; origin phase/op/line; verdict) |",
             "|---|---|---|"]
    for r in results:
        if r["top1"] and r["origin_ok"] and r["verdict_ok"]:
            continue
        eo = r["expected_origin"] or {}
        expected = (f"{r['expected_top'] or '-'}; {eo.get('phase', '-')}/{eo.get('op', '-')}/"
                    f"{r['expected_line'] or '-'}; {r['expected_verdict']}")
        o = r["origin"]
        now = (f"{(r['causes'] or ['-'])[0]} (then {', '.join(r['causes'][1:3]) or '-'}); "
               f"{o['phase'] or '-'}/{o['op'] or '-'}/{','.join(o['lines']) or '-'} "
               f"(step {o['step']}, {o['precision']}); {r['verdict']}")
        lines.append(f"| {r['file']} | {expected} | {now} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], help="run entries whose file name contains this (repeatable)")
    parser.add_argument("--family", action="append", default=[], help="run only this family (repeatable)")
    parser.add_argument("--round", type=int, action="append", default=[],
                        help="run only the entries of this held-out round (`round:` in expected.yaml; repeatable)")
    parser.add_argument("--experiments", choices=["manifest", "on", "off"], default="manifest",
                        help="confirming experiments: as each entry says (default), always, or never")
    parser.add_argument("--json", metavar="FILE", help="write per-entry results and the table as JSON")
    parser.add_argument("--gaps", metavar="FILE", help="write a markdown table of the entries the tool gets wrong")
    args = parser.parse_args(argv)

    entries = yaml.safe_load((CORPUS / "expected.yaml").read_text())
    entries = [e for e in entries
               if (not args.only or any(word in e["file"] for word in args.only))
               and (not args.family or e["family"] in args.family)
               and (not args.round or e.get("round") in args.round)]
    if not entries:
        print("no corpus entry matches", file=sys.stderr)
        return 2
    experiments = {"manifest": None, "on": True, "off": False}[args.experiments]
    results = []
    began = time.perf_counter()
    for entry in entries:
        t0 = time.perf_counter()
        doc = nandoctor.scan(CORPUS / entry["file"], **scan_kwargs(entry, experiments)).to_dict()
        result = score_entry(entry, doc)
        result["wall_seconds"] = round(time.perf_counter() - t0, 2)
        results.append(result)
        mark = "ok " if result["top1"] and result["origin_ok"] and result["verdict_ok"] else "BAD"
        print(f"{mark} {entry['file']:<34} {result['verdict']:<5} {(result['causes'] or ['-'])[0]:<22} "
              f"{result['wall_seconds']:.1f}s", file=sys.stderr)
    rows = table(results) + step_lines(results) + finding_lines(results)
    contradictions = [f"{r['file']}: {c}" for r in results for c in r["fix_contradictions"]]
    rows.append(f"fixes contradicting their own experiments: {len(contradictions)}")
    rows += [f"  {c}" for c in contradictions]
    print("\n".join(rows))
    print(f"({len(results)} entries, {time.perf_counter() - began:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"table": rows, "results": results}, indent=2))
    if args.gaps:
        Path(args.gaps).write_text(gaps_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
