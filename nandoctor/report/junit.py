"""`--format junit`: JUnit XML, one test case per precision run and per finding."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from .text import origin_sentence

RANK = {"error": 0, "warning": 1, "info": 2, "never": -1}


def render(doc: dict[str, Any]) -> str:
    limit = RANK[doc["fail_on"]]
    suite = ET.Element("testsuite", name=f"nandoctor {doc['model_file']}", timestamp="", time=f"{doc['seconds']:.3f}")
    failures = 0
    for run in doc["runs"]:
        case = ET.SubElement(suite, "testcase", classname="nandoctor.runs", name=f"train {run['precision']}",
                             time=f"{run['seconds']:.3f}")
        if run["status"] in ("nonfinite", "error"):
            failures += 1
            detail = origin_sentence(run["first_nonfinite"]) if run["first_nonfinite"] else \
                f"{run['error']['exc_type']}: {run['error']['message']}"
            ET.SubElement(case, "failure", message=f"{run['precision']}: {run['status']} at step "
                          f"{run['start_step'] + run['steps_run'] - 1}", type=run["status"]).text = detail
        elif run["status"] in ("timeout", "unsupported"):
            ET.SubElement(case, "skipped", message=run["note"] or run["status"])
        ET.SubElement(case, "system-out").text = (f"{run['steps_run']}/{run['steps_requested']} steps; "
                                                   f"losses {run['losses']}")
    for cause in doc["causes"]:
        case = ET.SubElement(suite, "testcase", classname=f"nandoctor.causes.{cause['severity']}",
                             name=f"{cause['id']}: {cause['title']}", file=cause.get("file") or "",
                             line=str(cause.get("line") or ""))
        body = "\n".join(cause["evidence"] + [f"fix: {cause['fix']}"] + cause.get("experiments", []))
        if limit >= 0 and RANK[cause["severity"]] <= limit:
            failures += 1
            ET.SubElement(case, "failure", message=cause["title"], type=cause["id"]).text = body
        else:
            ET.SubElement(case, "system-out").text = body
    suite.set("tests", str(len(suite.findall("testcase"))))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", str(len(suite.findall("testcase/skipped"))))
    root = ET.Element("testsuites", name="nandoctor", tests=suite.get("tests"), failures=str(failures))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
