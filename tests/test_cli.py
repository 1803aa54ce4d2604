"""The command line: exit codes, every bad-input path, user-code crashes as findings."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import HEALTHY_SOURCE, SAMPLES, json_of, run_cli


def test_healthy_scan_exits_0_with_json(model_file):
    result = run_cli("scan", model_file(HEALTHY_SOURCE), "--steps", "3", "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = json_of(result)
    assert doc["schema_version"] == 1 and doc["verdict"] == "pass" and doc["exit_code"] == 0
    assert doc["first_nonfinite"] is None and doc["causes"] == []
    assert [r["precision"] for r in doc["runs"]] == ["32-true", "16-mixed", "bf16-mixed"]
    assert set(doc["layers"]) == {"32-true", "16-mixed", "bf16-mixed"}


def test_findings_exit_1_and_fail_on_controls_it():
    path = SAMPLES / "sigmoid_mlp.py"          # warnings only
    assert run_cli("scan", path, "--steps", "5", "-q").exit_code == 0
    assert run_cli("scan", path, "--steps", "5", "-q", "--fail-on", "warning").exit_code == 1
    failing = SAMPLES / "nll_classifier.py"
    assert run_cli("scan", failing, "-q", "--no-experiments").exit_code == 1
    assert run_cli("scan", failing, "-q", "--no-experiments", "--fail-on", "never").exit_code == 0


@pytest.mark.parametrize("source, message", [
    ("def build_model(:\n", "syntax error at line 1"),
    ("import not_a_module_xyz\n", "ModuleNotFoundError"),
    ("def build_model():\n    return None\n", "does not define get_batch()"),
    ("def get_batch(step):\n    return 1, 2\n", "does not define build_model()"),
    ("raise ValueError('boom')\n", "ValueError: boom at line 1"),
    ("build_model = 3\ndef get_batch(step):\n    return 1\n", "does not define build_model()"),
    ("def build_model():\n    return 'x'\ndef get_batch(step):\n    return 1, 2\n", "must return a torch.nn.Module"),
    ("import torch\ndef build_model():\n    return torch.nn.Linear(2, 2)\ndef get_batch(step):\n    return torch.ones(2)\n",
     "get_batch(step) must return (inputs, targets)"),
    ("import torch\ndef build_model():\n    return torch.nn.Linear(2, 2)\ndef get_batch():\n    return 1, 2\n",
     "get_batch must accept the arguments of get_batch(step)"),
])
def test_bad_model_files_exit_2_without_traceback(model_file, source, message):
    result = run_cli("scan", model_file(source), "--steps", "1")
    assert result.exit_code == 2
    assert message in result.stderr and "model.py" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("args, message", [
    (["scan", "does_not_exist.py"], "does not exist"),
    (["scan", "{dir}"], "is a directory"),
    (["scan", "{txt}"], "is not a Python file"),
    (["scan", "{model}", "--precision", "fp8"], "unknown precision 'fp8'"),
    (["scan", "{model}", "--format", "xml"], "unknown --format 'xml'"),
    (["scan", "{model}", "--config", "{badkey}"], "unknown config key 'stpes'"),
    (["scan", "{model}", "--config", "{badtype}"], "config key 'steps' must be an integer"),
    (["scan", "{model}", "--config", "{badyaml}"], "is not valid YAML"),
    (["scan", "{model}", "--config", "missing.yaml"], "missing.yaml does not exist"),
    (["scan", "{model}", "--device", "cuda:0"], "no usable CUDA device"),
    (["scan", "{model}", "--steps", "0"], "must be an integer >= 1"),
    (["explain", "no-such-cause"], "unknown cause id"),
])
def test_bad_input_exits_2_with_one_message(tmp_path, model_file, args, message):
    files = {"model": model_file(HEALTHY_SOURCE), "dir": tmp_path, "txt": tmp_path / "m.txt",
             "badkey": tmp_path / "a.yaml", "badtype": tmp_path / "b.yaml", "badyaml": tmp_path / "c.yaml"}
    (tmp_path / "m.txt").write_text("x")
    (tmp_path / "a.yaml").write_text("stpes: 3\n")
    (tmp_path / "b.yaml").write_text("steps: many\n")
    (tmp_path / "c.yaml").write_text("steps: [1\n")
    if "cuda" in " ".join(args):
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    result = run_cli(*[a.format(**files) for a in args], cwd=tmp_path)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_exception_in_user_code_is_a_finding_at_their_line(model_file):
    path = model_file("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 2)

        def forward(self, x):
            return self.layer(x.view(-1, 5))

    def build_model():
        return Net()

    def get_batch(step):
        return torch.randn(8, 4), torch.randint(0, 2, (8,))
    """)
    result = run_cli("scan", path, "--steps", "2", "--format", "json")
    assert result.exit_code == 1
    doc = json_of(result)
    cause = doc["causes"][0]
    assert cause["id"] == "user-error" and cause["source"].endswith("model.py:11")
    assert "RuntimeError" in cause["title"] and doc["runs"][0]["error"]["phase"] == "forward"


def test_internal_error_exits_3(monkeypatch, model_file):
    import nandoctor.api as api

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(api, "diagnose", broken)
    result = run_cli("scan", model_file(HEALTHY_SOURCE), "--steps", "1")
    assert result.exit_code == 3
    assert "internal error" in result.stderr and "Traceback" not in result.stderr


def test_version_and_help():
    assert run_cli("--version").stdout.startswith("nandoctor ")
    help_text = run_cli("scan", "--help").stdout
    assert "Examples" in help_text and "--fail-on" in help_text


def test_explain_prints_the_documentation():
    result = run_cli("explain", "unstable-op")
    assert result.exit_code == 0
    for heading in ("What it detects", "Why it produces NaN or Inf", "Evidence used", "How to fix", "Example"):
        assert heading in result.stdout
    listing = run_cli("explain").stdout
    assert "masked-softmax" in listing and "optimizer-eps" in listing


def test_json_output_to_file_and_user_files_untouched(tmp_path, model_file):
    path = model_file(HEALTHY_SOURCE)
    before = path.read_bytes()
    out = tmp_path / "reports" / "scan.json"
    result = run_cli("scan", path, "--steps", "2", "--format", "json", "--output", out, "--quiet")
    assert result.exit_code == 0 and result.stdout == ""
    assert json.loads(out.read_text())["verdict"] == "pass"
    assert path.read_bytes() == before


def test_subprocess_entry_point(model_file):
    proc = subprocess.run([sys.executable, "-m", "nandoctor", "scan", str(model_file(HEALTHY_SOURCE)), "--steps", "2",
                           "--format", "json", "-p", "fp32"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["runs"][0]["precision"] == "32-true"


def test_max_seconds_reports_what_it_could_not_finish(model_file):
    result = run_cli("scan", model_file(HEALTHY_SOURCE), "--steps", "50", "--max-seconds", "0.0001", "--format", "json")
    doc = json_of(result)
    assert {r["status"] for r in doc["runs"]} == {"timeout"}
    assert any(c["id"] == "scan-incomplete" for c in doc["causes"])


def test_a_model_that_hangs_is_stopped_and_reported(model_file):
    import time
    path = model_file("""
    import torch
    from torch import nn

    class Stuck(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 2)

        def forward(self, x):
            if torch.rand(()) > -1:      # always: a data-dependent loop that never ends
                while True:
                    pass
            return self.layer(x)

    def build_model():
        return Stuck()

    def get_batch(step):
        return torch.randn(8, 4), torch.randint(0, 2, (8,))
    """)
    began = time.monotonic()
    result = run_cli("scan", path, "--max-seconds", "2", "--format", "json")
    assert time.monotonic() - began < 30
    doc = json_of(result)
    assert doc["runs"][0]["status"] == "timeout" and "stopped inside step 0" in doc["runs"][0]["note"]
    cause = next(c for c in doc["causes"] if c["id"] == "scan-incomplete")
    # No step completed, so the gate checked nothing: an error, never a pass.
    assert cause["severity"] == "error" and "hung" in cause["title"] and "nothing was scanned" in cause["title"]
    assert doc["verdict"] == "fail" and result.exit_code == 1


def test_short_help_everywhere_and_the_scan_example_exists():
    from conftest import ROOT
    for command in ([], ["scan"], ["postmortem"], ["config"], ["explain"], ["init"]):
        result = run_cli(*command, "-h")
        assert result.exit_code == 0 and "Usage" in result.stdout, command
    scan_help = run_cli("scan", "--help").stdout
    examples = [w for w in scan_help.split() if w.startswith("sample_models/")]
    assert examples and all((ROOT / w).is_file() for w in examples)
    assert "--install-completion" in run_cli("--help").stdout


def test_verbose_says_what_ran_on_stderr(model_file):
    result = run_cli("scan", model_file(HEALTHY_SOURCE), "--steps", "2", "-p", "32-true", "-v", "-f", "json")
    assert result.exit_code == 0, result.stderr
    json.loads(result.stdout)
    assert "ran 32-true: ok, 2 of 2 steps" in result.stderr and "scan took" in result.stderr


def test_api_keeps_the_callers_random_state_and_shows_its_signature(model_file):
    import inspect
    import random
    import numpy
    import torch
    import nandoctor
    assert "precisions" in inspect.signature(nandoctor.scan).parameters and "NaN" in nandoctor.scan.__doc__
    assert "baseline" in inspect.signature(nandoctor.postmortem).parameters
    path = model_file(HEALTHY_SOURCE)
    random.seed(123)
    numpy.random.seed(123)
    torch.manual_seed(123)
    expected = (random.random(), numpy.random.rand(), torch.rand(1).item())
    random.seed(123)
    numpy.random.seed(123)
    torch.manual_seed(123)
    nandoctor.scan(path, steps=2, precisions=["32-true"], experiments=False)
    assert (random.random(), numpy.random.rand(), torch.rand(1).item()) == expected
