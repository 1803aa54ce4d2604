"""Every output format parsed back: JSON against the published schema, JUnit XML, SARIF,
GitHub workflow commands, Markdown; plus init and config."""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from importlib.resources import files

import jsonschema
import pytest

from conftest import HEALTHY_SOURCE, SAMPLES, json_of, run_cli, scan_sample

SCHEMA = json.loads((files("nandoctor") / "report" / "schema.json").read_text())
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
    root = ET.fromstring(result.stdout)
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    names = [c.get("name") for c in cases]
    assert names[:3] == ["train 32-true", "train 16-mixed", "train bf16-mixed"]
    assert any(n.startswith("unstable-op:") for n in names)
    failures = [c for c in cases if c.find("failure") is not None]
    assert int(suite.get("failures")) == len(failures) >= 4
    assert int(suite.get("tests")) == len(cases)
    cause = next(c for c in cases if c.get("name", "").startswith("unstable-op"))
    assert cause.get("file") == "sample_models/nll_classifier.py" and cause.get("line") == "28"


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


def test_init_template_scans_clean(tmp_path):
    run_cli("init", tmp_path)
    result = run_cli("scan", tmp_path / "model.py", "--steps", "3", "--format", "json", cwd=tmp_path)
    assert result.exit_code == 0 and json_of(result)["verdict"] == "pass"


def test_config_command_shows_sources(tmp_path):
    (tmp_path / "nandoctor.yaml").write_text("steps: 4\n")
    result = run_cli("config", "--format", "json", cwd=tmp_path)
    data = json.loads(result.stdout)
    assert data["values"]["steps"] == 4 and data["sources"]["steps"] == "nandoctor.yaml"
    assert data["sources"]["seed"] == "default"
    table = run_cli("config", cwd=tmp_path).stdout
    assert "steps" in table and "nandoctor.yaml" in table
