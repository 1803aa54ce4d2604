"""Every output format parsed back: JSON against the published schema, JUnit XML, SARIF,
GitHub workflow commands, Markdown; plus init and config."""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from importlib.resources import files

import os
import subprocess
import sys

import jsonschema
import pytest
import xmlschema

from conftest import HEALTHY_SOURCE, ROOT, SAMPLES, json_of, run_cli, scan_sample

SCHEMA = json.loads((files("nandoctor") / "report" / "schema.json").read_text())
# The Jenkins xUnit plugin's JUnit schema (Ant, Surefire, Jenkins); source and licence in tests/data/README.md.
XSD = xmlschema.XMLSchema(str(ROOT / "tests" / "data" / "junit-10.xsd"))
GOLDEN = ROOT / "tests" / "golden"
FAILING = ["nll_classifier", "pairwise_embedding", "demand_forecast", "digit_labels", "sigmoid_mlp", "healthy_lstm"]


@pytest.mark.parametrize("sample", FAILING)
def test_json_documents_validate_against_the_published_schema(sample):
    doc = json.loads(json.dumps(scan_sample(sample).to_dict(), allow_nan=False))
    jsonschema.validate(doc, SCHEMA)


def test_cli_json_validates_and_has_no_bare_nan(model_file):
    result = run_cli("scan", SAMPLES / "nll_classifier.py", "--format", "json", "--no-experiments")
    assert "NaN," not in result.stdout.replace('"NaN"', "")
    jsonschema.validate(json_of(result), SCHEMA)


def test_junit_xml_parses_with_a_case_per_run_and_finding():
    result = run_cli("scan", SAMPLES / "nll_classifier.py", "--format", "junit", "--no-experiments")
    assert result.exit_code == 1
    XSD.validate(result.stdout)
    root = ET.fromstring(result.stdout)
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    names = [c.get("name") for c in cases]
    assert names[:3] == ["train 32-true", "train 16-mixed", "train bf16-mixed"]
    # Stable names (cause id + location) so CI history follows one test; counts go in the message.
    assert "unstable-op at sample_models/nll_classifier.py:28" in names
    failures = [c for c in cases if c.find("failure") is not None]
    assert int(suite.get("failures")) == len(failures) >= 4
    assert int(suite.get("tests")) == len(cases)
    cause = next(c for c in cases if c.get("name").startswith("unstable-op"))
    assert cause.get("file") is None and cause.get("line") is None       # the XSD has no such attributes
    assert cause.find("failure").get("message").startswith("error: ")


def test_the_xsd_check_is_live():
    """The schema rejects what Jenkins rejects: `file`/`line` on a testcase."""
    bad = ('<testsuites><testsuite name="s" tests="1" failures="0" errors="0">'
           '<testcase name="t" file="m.py" line="3"/></testsuite></testsuites>')
    assert not XSD.is_valid(bad)


def _saved(name: str) -> dict:
    from nandoctor.report.saved import load_document
    return load_document(GOLDEN / f"{name}.trace.json")


def _replay() -> dict:
    doc = _saved("demand_forecast")
    doc["command"] = "replay"
    doc["history"] = [{"step": i, "loss": 1.0 + i, "grad_norm": "NaN"} for i in range(4)]
    return doc


@pytest.mark.parametrize("fmt", ["json", "markdown", "github", "junit", "sarif"])
def test_postmortem_in_every_format_says_what_the_checkpoint_holds(fmt):
    """Regression: postmortem markdown/github/junit said "None" and "no non-finite value in any run"
    although the checkpoint held NaN."""
    from nandoctor.report import render
    doc = _saved("postmortem_safetensors")
    text = render(doc, fmt)
    assert "None" not in text.replace("null", "") and "no non-finite value in any run" not in text
    if fmt == "json":
        jsonschema.validate(json.loads(text), SCHEMA)
    elif fmt == "markdown":
        assert text.startswith("## nandoctor postmortem: ❌ FAIL — `model.safetensors`")
        assert "2 of 4 tensors hold NaN/Inf; worst 0.bias" in text and "| `2.weight` | float32 | [4, 16] | 1 | 0 |" in text
    elif fmt == "github":
        assert text.strip().splitlines()[-1].startswith("nandoctor postmortem fail: 1 error(s)")
        assert "2 of 4 tensors hold NaN/Inf" in text
    elif fmt == "junit":
        XSD.validate(text)
        case = ET.fromstring(text).find(".//testcase[@name='tensors finite']")
        assert case.find("failure").get("message") == "2 of 4 tensors hold NaN/Inf"
    else:
        assert json.loads(text)["runs"][0]["results"][0]["ruleId"] == "param-nonfinite"


@pytest.mark.parametrize("fmt", ["json", "markdown", "github", "junit", "sarif"])
def test_replay_documents_render_in_every_format(fmt):
    from nandoctor.report import render
    doc = _replay()
    text = render(doc, fmt)
    if fmt == "json":
        jsonschema.validate(json.loads(text), SCHEMA)
    elif fmt == "markdown":
        assert text.startswith("## nandoctor replay: ❌ FAIL") and "history window of 4 entries" in text
    elif fmt == "github":
        assert text.strip().splitlines()[-1].startswith("nandoctor replay fail:")
    elif fmt == "junit":
        XSD.validate(text)
        assert ET.fromstring(text).find("testsuite").get("name").startswith("nandoctor replay ")
    else:
        assert json.loads(text)["runs"][0]["results"][0]["ruleId"] == "loss-scale-collapse"


@pytest.mark.parametrize("width", [60, 80])
def test_console_tables_fit_the_terminal_and_keep_module_leaves(width):
    import io
    from rich.console import Console
    from nandoctor.report.console import print_report
    doc = _saved("demand_forecast")
    leaves = {}
    for precision, layers in doc["layers"].items():
        for i, row in enumerate(layers[1:], 1):
            row["module"] = f"encoder.layers.{i}.self_attention.output_projection_{i}"
            leaves[row["module"]] = f"output_projection_{i}"
    buffer = io.StringIO()
    print_report(doc, Console(file=buffer, width=width, color_system=None))
    lines = buffer.getvalue().splitlines()
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    table_lines = [line for line in lines if "│" in line]
    shown = [leaf for leaf in leaves.values() if any(f"{leaf} " in line or line.endswith(leaf) for line in table_lines)]
    assert len(shown) >= 5, "\n".join(lines)        # the tables show whole leaves, abbreviated in the middle
    assert width >= 80 or "….output_projection_" in buffer.getvalue()


def test_console_report_of_a_postmortem_at_60_columns():
    import io
    from rich.console import Console
    from nandoctor.report.console import print_report
    buffer = io.StringIO()
    print_report(_saved("postmortem_safetensors"), Console(file=buffer, width=60, color_system=None))
    text = buffer.getvalue()
    assert "nandoctor postmortem FAIL" in text and "2 of 4 tensors hold NaN/Inf" in text
    assert all(len(line) <= 60 for line in text.splitlines())


def test_trace_then_report_rebuilds_the_same_document(tmp_path):
    trace = tmp_path / "run.trace.json"
    direct = run_cli("scan", SAMPLES / "nll_classifier.py", "--no-experiments", "-q", "--format", "json",
                     "--trace", trace)
    again = run_cli("report", trace, "--format", "json")
    assert direct.exit_code == again.exit_code == 1
    assert json_of(again) == json_of(direct)
    gate = run_cli("report", trace, "--format", "json", "--fail-on", "never")
    assert gate.exit_code == 0 and json_of(gate)["fail_on"] == "never"
    # A JSON report renders as it is, too.
    saved = tmp_path / "report.json"
    saved.write_text(direct.stdout)
    assert run_cli("report", saved, "--format", "markdown").stdout == run_cli("report", trace, "--format", "markdown").stdout


def test_report_needs_no_torch(tmp_path):
    code = ("import sys; from nandoctor.cli import main; sys.argv = ['nandoctor', 'report', sys.argv[1], '-f', 'junit', "
            "'--html', sys.argv[2]]\ntry:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nprint('exit', code)")
    out = subprocess.run([sys.executable, "-c", code, str(GOLDEN / "nll_classifier.trace.json"), str(tmp_path / "r.html")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("exit 1") and (tmp_path / "r.html").stat().st_size > 10_000


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"), ("not json", "is not JSON"), ('{"a": 1}', "neither a nandoctor trace"),
    ('{"nandoctor_trace": 1, "command": "scan", "trace": {"runs": 3}}', "damaged"),
])
def test_report_of_unusable_input_is_exit_2(tmp_path, content, message):
    path = tmp_path / "t.json"
    if content is not None:
        path.write_text(content)
    result = run_cli("report", path)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_sarif_2_1_0_structure():
    result = run_cli("scan", SAMPLES / "nll_classifier.py", "--format", "sarif", "--no-experiments")
    sarif = json.loads(result.stdout)
    assert sarif["version"] == "2.1.0" and "sarif-2.1.0" in sarif["$schema"]
    run = sarif["runs"][0]
    rules = {r["id"] for r in run["tool"]["driver"]["rules"]}
    for res in run["results"]:
        assert res["ruleId"] in rules and res["level"] in ("error", "warning", "note", "none")
        assert run["tool"]["driver"]["rules"][res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["message"]["text"]
    top = run["results"][0]
    region = top["locations"][0]["physicalLocation"]
    assert region["artifactLocation"]["uri"] == "sample_models/nll_classifier.py" and region["region"]["startLine"] == 28


COMMAND = re.compile(r"^::(error|warning|notice)( [a-z]+=[^,:]*(,[a-z]+=[^,:]*)*)?::[^\n\r]*$")


def test_github_workflow_commands_are_well_formed():
    result = run_cli("scan", SAMPLES / "pairwise_embedding.py", "--format", "github", "--no-experiments")
    lines = result.stdout.strip().splitlines()
    commands = [l for l in lines if l.startswith("::")]
    assert commands and all(COMMAND.match(l) for l in commands), commands
    assert commands[0].startswith("::error file=sample_models/pairwise_embedding.py,line=14,title=nandoctor grad-singularity")
    assert "%0Afix%3A" not in commands[0] and "%0Afix: " in commands[0]   # data keeps ':' but escapes newlines
    assert lines[-1].startswith("nandoctor fail:")


def test_github_escaping():
    from nandoctor.report.github import escape_data, escape_property
    assert escape_data("a%b\nc\rd") == "a%25b%0Ac%0Dd"
    assert escape_property("x:y,z") == "x%3Ay%2Cz"


def test_markdown_for_the_step_summary():
    result = run_cli("scan", SAMPLES / "nll_classifier.py", "--format", "markdown", "--no-experiments")
    text = result.stdout
    assert text.startswith("## nandoctor: ❌ FAIL")
    assert "| 1 | ❌ error | `unstable-op` |" in text and "torch.log_softmax" in text
    assert "| 32-true | nonfinite | 1/20 |" in text


def test_rich_report_to_a_file(tmp_path):
    out = tmp_path / "report.txt"
    result = run_cli("scan", SAMPLES / "nll_classifier.py", "--no-experiments", "--output", out)
    assert result.exit_code == 1
    text = out.read_text()
    assert "first non-finite value" in text and "unstable-op" in text and "fix:" in text


def test_init_writes_templates_and_never_overwrites(tmp_path):
    result = run_cli("init", tmp_path / "proj")
    assert result.exit_code == 0
    model = tmp_path / "proj" / "model.py"
    assert "def build_model" in model.read_text() and (tmp_path / "proj" / "nandoctor.yaml").exists()
    model.write_text("# mine\n")
    again = run_cli("init", tmp_path / "proj")
    assert again.exit_code == 2 and "never overwrites" in again.stderr
    assert model.read_text() == "# mine\n"


def test_config_command_shows_sources(tmp_path):
    (tmp_path / "nandoctor.yaml").write_text("steps: 4\n")
    result = run_cli("config", "--format", "json", cwd=tmp_path)
    data = json.loads(result.stdout)
    assert data["values"]["steps"] == 4 and data["sources"]["steps"] == "nandoctor.yaml"
    assert data["sources"]["seed"] == "default"
    table = run_cli("config", cwd=tmp_path).stdout
    assert "steps" in table and "nandoctor.yaml" in table
