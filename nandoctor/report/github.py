"""`--format github`: GitHub Actions workflow commands that annotate the user's source lines.

Syntax: `::error file=F,line=L,title=T::MESSAGE`. Data is escaped as the runner expects:
% -> %25, CR -> %0D, LF -> %0A; property values additionally : -> %3A and , -> %2C.
"""
from __future__ import annotations

from typing import Any

from .text import headline, subject, symptom_lines

LEVEL = {"error": "error", "warning": "warning", "info": "notice"}


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render(doc: dict[str, Any]) -> str:
    lines = []
    for cause in doc["causes"]:
        props = []
        if cause.get("file"):
            props.append(f"file={escape_property(cause['file'])}")
            if cause.get("line"):
                props.append(f"line={int(cause['line'])}")
        title = "nandoctor " + cause["id"] + ": " + cause["title"]
        props.append(f"title={escape_property(title)}")
        message = "\n".join(cause["evidence"] + symptom_lines(cause) + [f"fix: {cause['fix']}"])
        lines.append(f"::{LEVEL[cause['severity']]} {','.join(props)}::{escape_data(message)}")
    counts = {s: sum(1 for c in doc["causes"] if c["severity"] == s) for s in ("error", "warning", "info")}
    command = doc.get("command", "scan")
    lines.append(f"nandoctor{'' if command == 'scan' else ' ' + command} {doc['verdict']}: {counts['error']} error(s), "
                 f"{counts['warning']} warning(s), {counts['info']} note(s) for {subject(doc)}; {headline(doc)}")
    return "\n".join(lines) + "\n"
