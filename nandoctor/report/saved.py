"""Saved traces: what `--trace FILE` writes and `nandoctor report FILE` re-renders.

A saved trace holds the plain trace (Trace.to_dict / PostmortemTrace through trace.plain), the
findings and the gate (`fail_on`), so the report document is rebuilt exactly as the command
built it, with no model, no checkpoint and no torch. `nandoctor report` also accepts a JSON
report document (`--format json` output) and renders it as it is.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..diagnose import Finding
from ..errors import InputError
from ..trace import PostmortemTrace, Trace, from_plain, to_plain
from .document import build_document, build_postmortem_document

TRACE_FORMAT = 1      # version of the saved-trace wrapper below


def saved_trace(command: str, trace: Trace | PostmortemTrace, findings: list[Finding], fail_on: str) -> dict[str, Any]:
    """The JSON-ready content of a `--trace` file."""
    return {"nandoctor_trace": TRACE_FORMAT, "command": command, "fail_on": fail_on,
            "trace": to_plain(trace), "findings": [to_plain(f) for f in findings]}


def write_trace(path: Path, command: str, trace: Trace | PostmortemTrace, findings: list[Finding], fail_on: str) -> None:
    text = json.dumps(saved_trace(command, trace, findings, fail_on), allow_nan=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot write the trace to {path}: {err.strerror or err}.") from None


def document_from_saved(data: dict[str, Any], fail_on: Optional[str] = None) -> dict[str, Any]:
    """Rebuild the report document from a saved trace (or pass a saved document through)."""
    if "nandoctor_trace" in data:
        findings = [from_plain(Finding, f) for f in data.get("findings", [])]
        gate = fail_on or data.get("fail_on", "error")
        if data.get("command") == "postmortem":
            return build_postmortem_document(from_plain(PostmortemTrace, data["trace"]), findings, gate)
        return build_document(Trace.from_dict(data["trace"]), findings, gate, command=data.get("command", "scan"))
    if "schema_version" in data and "causes" in data and "verdict" in data:
        if fail_on is not None and fail_on != data["fail_on"]:
            raise InputError("--fail-on needs a saved trace (--trace FILE); a JSON report keeps the gate it was made with.")
        return data
    raise InputError("this JSON file is neither a nandoctor trace (written by --trace) nor a nandoctor JSON report "
                     "(written by --format json).")


def load_document(path: Path, fail_on: Optional[str] = None) -> dict[str, Any]:
    """Read FILE and return the document to render; unusable input raises InputError (exit 2)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} does not exist; pass a file written by --trace or --format json.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}.") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not JSON ({err.msg} at line {err.lineno}); pass a file written by --trace "
                         "or --format json.") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} holds JSON but not a nandoctor trace or report.")
    try:
        return document_from_saved(data, fail_on)
    except InputError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path} looks like a nandoctor trace but is damaged or from another version "
                         f"({type(err).__name__}: {err}).") from None
