"""`--format sarif`: SARIF 2.1.0 for code-scanning dashboards."""
from __future__ import annotations

import json
from typing import Any

from .text import symptom_lines

LEVEL = {"error": "error", "warning": "warning", "info": "note"}
SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def _rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    from ..diagnose import explain
    seen: dict[str, dict[str, Any]] = {}
    for cause in doc["causes"]:
        if cause["id"] in seen:
            continue
        text = explain(cause["id"]) or cause["title"]
        first = text.split("\n\n")[0].replace("What it detects: ", "").replace("\n", " ")
        seen[cause["id"]] = {"id": cause["id"], "name": cause["id"].replace("-", " ").title().replace(" ", ""),
                             "shortDescription": {"text": first[:200]}, "fullDescription": {"text": first},
                             "help": {"text": text}, "properties": {"tags": ["numerics", "training"]}}
    return list(seen.values())


def render(doc: dict[str, Any]) -> str:
    rules = _rules(doc)
    index = {r["id"]: i for i, r in enumerate(rules)}
    results = []
    for cause in doc["causes"]:
        result: dict[str, Any] = {
            "ruleId": cause["id"], "ruleIndex": index[cause["id"]], "level": LEVEL[cause["severity"]],
            "message": {"text": f"{cause['title']}. " + " ".join(cause["evidence"] + symptom_lines(cause))
                        + f" Fix: {cause['fix']}"},
            "properties": {"confidence": cause["confidence"], "precisions": cause["precisions"],
                           "confirmed": cause["confirmed"]},
        }
        if cause.get("file"):
            location: dict[str, Any] = {"artifactLocation": {"uri": cause["file"].replace("\\", "/")}}
            if cause.get("line"):
                location["region"] = {"startLine": int(cause["line"])}
            result["locations"] = [{"physicalLocation": location}]
        results.append(result)
    sarif = {"$schema": SCHEMA, "version": "2.1.0", "runs": [{
        "tool": {"driver": {"name": "nandoctor", "version": doc["tool"]["version"],
                            "informationUri": "https://pypi.org/project/nandoctor/", "rules": rules}},
        "results": results,
        "invocations": [{"executionSuccessful": True, "exitCode": doc["exit_code"]}],
    }]}
    return json.dumps(sarif, indent=2) + "\n"
