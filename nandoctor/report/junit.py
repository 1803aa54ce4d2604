"""`--format junit`: JUnit XML for any CI's test report, valid against the Jenkins/Surefire
JUnit XSD (tests/data/junit-10.xsd).

Test case names are stable from run to run, so CI test history follows one case: a run is
"train <precision>", a cause is "<cause id> at <file:line>" (or "in <module>"), a checkpoint
check is "<what> finite". Counts and severities go in the failure message, never in a name.
`testcase` carries no `file`/`line` attributes: the XSD rejects them; the location is in the name.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from .text import cause_location, headline, nonfinite_tensors, subject, symptom_lines

RANK = {"error": 0, "warning": 1, "info": 2, "never": -1}


def _runs(suite: ET.Element, doc: dict[str, Any]) -> int:
    failures = 0
    for run in doc.get("runs", []):
        case = ET.SubElement(suite, "testcase", classname=f"nandoctor.{doc['command']}.runs",
                             name=f"train {run['precision']}", time=f"{run['seconds']:.3f}")
        if run["status"] in ("nonfinite", "error"):
            failures += 1
            last = run["start_step"] + max(run["steps_run"], 1) - 1
            if run["first_nonfinite"]:
                detail = headline({"first_nonfinite": run["first_nonfinite"]})
            elif run.get("error"):
                detail = f"{run['error']['exc_type']}: {run['error']['message']}"
            else:
                detail = run.get("note") or run["status"]
            ET.SubElement(case, "failure", message=f"{run['status']} at step {last} after {run['steps_run']} of "
                          f"{run['steps_requested']} steps", type=run["status"]).text = detail
        elif run["status"] in ("timeout", "unsupported"):
            ET.SubElement(case, "skipped", message=run["note"] or run["status"])
        ET.SubElement(case, "system-out").text = f"{run['steps_run']}/{run['steps_requested']} steps; losses {run['losses']}"
    return failures


def _checkpoint(suite: ET.Element, doc: dict[str, Any]) -> int:
    failures = 0
    bad = nonfinite_tensors(doc)
    case = ET.SubElement(suite, "testcase", classname="nandoctor.postmortem.checkpoint", name="tensors finite")
    if bad:
        failures += 1
        ET.SubElement(case, "failure", message=f"{len(bad)} of {len(doc['tensors'])} tensors hold NaN/Inf",
                      type="nonfinite").text = "\n".join(f"{t['name']}: {t['nan']} NaN, {t['inf']} Inf of {t['numel']}"
                                                         for t in bad[:50])
    opt = doc.get("optimizer_state")
    if opt is not None:
        case = ET.SubElement(suite, "testcase", classname="nandoctor.postmortem.checkpoint", name="optimizer state finite")
        poisoned = opt["tensors"]
        if poisoned:
            failures += 1
            ET.SubElement(case, "failure", message=f"{len(poisoned)} optimizer state tensor(s) are non-finite or negative",
                          type="poisoned-optimizer-state").text = "\n".join(
                f"{o['param']} {o['key']}: {o['nan']} NaN, {o['inf']} Inf, {o['negatives']} negative" for o in poisoned[:50])
    return failures


def render(doc: dict[str, Any]) -> str:
    limit = RANK[doc["fail_on"]]
    suite = ET.Element("testsuite", name=f"nandoctor {doc['command']} {subject(doc)}", tests="0", failures="0",
                       errors="0", skipped="0", time=f"{doc.get('seconds', 0.0):.3f}")
    failures = _checkpoint(suite, doc) if doc["command"] == "postmortem" else _runs(suite, doc)
    for cause in doc["causes"]:
        where = cause_location(cause)
        name = cause["id"] + (f" at {where}" if cause.get("source") else f" in {cause['module']}" if cause.get("module") else "")
        case = ET.SubElement(suite, "testcase", classname=f"nandoctor.{doc['command']}.causes", name=name)
        body = "\n".join(cause["evidence"] + symptom_lines(cause) + [f"fix: {cause['fix']}"] + cause.get("experiments", []))
        message = f"{cause['severity']}: {cause['title']} (confidence {cause['confidence']:.2f})"
        if limit >= 0 and RANK[cause["severity"]] <= limit:
            failures += 1
            ET.SubElement(case, "failure", message=message, type=cause["id"]).text = body
        else:
            ET.SubElement(case, "system-out").text = f"{message}\n{body}"
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(failures))
    suite.set("skipped", str(len(suite.findall("testcase/skipped"))))
    root = ET.Element("testsuites", name="nandoctor", tests=str(len(cases)), failures=str(failures), errors="0",
                      time=suite.get("time"))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
