"""Golden files: the console (100 columns, no colour), Markdown and JSON reports of three saved
traces (a loss-phase origin, a GradScaler collapse, a safetensors postmortem), re-rendered with
no model and no torch. The traces under tests/golden/ are what `--trace` wrote, with volatile
fields (seconds, versions) zeroed.

After an intended change to a report, regenerate the goldens and review the diff:
    NANDOCTOR_UPDATE_GOLDEN=1 python3 -m pytest tests/test_golden.py
After a change to what the runs or rules record, re-run the three commands and save new traces too:
    NANDOCTOR_UPDATE_GOLDEN=record python3 -m pytest tests/test_golden.py
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from rich.console import Console

from conftest import ROOT, SAMPLES, run_cli
from nandoctor.report import render
from nandoctor.report.console import print_report
from nandoctor.report.saved import load_document

GOLDEN = ROOT / "tests" / "golden"
UPDATE = os.environ.get("NANDOCTOR_UPDATE_GOLDEN") in ("1", "record")
RECORD = os.environ.get("NANDOCTOR_UPDATE_GOLDEN") == "record"
CASES = ["nll_classifier", "demand_forecast", "postmortem_safetensors"]


def _zero_volatile(data: dict) -> dict:
    trace = data["trace"]
    for key in ("seconds", "experiments_seconds"):
        if key in trace:
            trace[key] = 0.0
    for key in ("torch_version", "tool_version"):
        if key in trace:
            trace[key] = "X"
    for item in trace.get("runs", []) + trace.get("experiments", []):
        item["seconds"] = 0.0
    if "path" in trace:
        trace["path"] = Path(trace["path"]).name
    return data


def _record(name: str, tmp_path: Path) -> None:
    """Run the real command with --trace (from the repository root, so paths are relative)."""
    out = tmp_path / "trace.json"
    if name == "postmortem_safetensors":
        import torch
        from safetensors.torch import save_file
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["2.weight"][0, 0] = float("nan")
        state["0.bias"][3] = float("inf")
        ckpt = tmp_path / "model.safetensors"
        save_file(state, str(ckpt))
        run_cli("postmortem", ckpt, "-q", "--trace", out, cwd=ROOT)
    else:
        run_cli("scan", SAMPLES / f"{name}.py", "-q", "--trace", out, cwd=ROOT)
    data = _zero_volatile(json.loads(out.read_text()))
    (GOLDEN / f"{name}.trace.json").write_text(json.dumps(data, sort_keys=True) + "\n")


def _renders(name: str) -> dict[str, str]:
    doc = load_document(GOLDEN / f"{name}.trace.json")
    buffer = io.StringIO()
    print_report(doc, Console(file=buffer, width=100, color_system=None, force_terminal=False))
    plain = json.loads(render(doc, "json"))
    plain["environment"]["python"] = "X"
    return {"console.txt": buffer.getvalue(), "md": render(doc, "markdown"),
            "json": json.dumps(plain, indent=2, sort_keys=True) + "\n"}


@pytest.mark.parametrize("name", CASES)
def test_reports_match_the_golden_files(name, tmp_path):
    if RECORD:
        _record(name, tmp_path)
    for suffix, text in _renders(name).items():
        golden = GOLDEN / f"{name}.{suffix}"
        if UPDATE:
            golden.write_text(text, encoding="utf-8")
        assert golden.exists(), f"{golden} is missing; run with NANDOCTOR_UPDATE_GOLDEN=1 to create it"
        assert text == golden.read_text(encoding="utf-8"), (
            f"{golden.name} differs from the rendered report; if the change is intended, "
            "regenerate with NANDOCTOR_UPDATE_GOLDEN=1 and review the diff")


def test_golden_traces_tell_the_expected_story():
    """The saved traces are real: each one's verdict and top cause are what the sample is for."""
    expected = {"nll_classifier": "unstable-op", "demand_forecast": "loss-scale-collapse",
                "postmortem_safetensors": "param-nonfinite"}
    for name, cause in expected.items():
        doc = load_document(GOLDEN / f"{name}.trace.json")
        assert doc["verdict"] == "fail" and doc["causes"][0]["id"] == cause, name
