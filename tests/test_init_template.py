"""`nandoctor init`'s templates: the model file scans clean as written and with its optional
functions (build_scheduler, training_step) switched on, and nandoctor.yaml holds every key at
its built-in default."""
from __future__ import annotations

import re

import yaml

from conftest import json_of, run_cli
from nandoctor.load.config import DEFAULTS

# The template's optional functions are commented code: `# def ...` and its `#     ` body lines.
COMMENTED_CODE = re.compile(r"^# (def .*|    .*)$", re.MULTILINE)


def _scan(model, cwd):
    result = run_cli("scan", model, "--steps", "3", "--format", "json", cwd=cwd)
    assert result.exit_code == 0, result.stderr + result.stdout
    return json_of(result)


def test_the_template_scans_clean_as_written(tmp_path):
    assert run_cli("init", tmp_path).exit_code == 0
    doc = _scan(tmp_path / "model.py", tmp_path)
    assert doc["verdict"] == "pass" and doc["causes"] == []


def test_the_template_shows_the_optional_functions_and_scans_clean_with_them_on(tmp_path):
    run_cli("init", tmp_path)
    model = tmp_path / "model.py"
    text = model.read_text()
    for name in ("def build_scheduler(optimizer)", "def training_step(model, batch)"):
        assert f"# {name}" in text, f"the template shows {name} as an optional function"
    model.write_text(COMMENTED_CODE.sub(r"\1", text))
    assert "\ndef build_scheduler(optimizer)" in model.read_text()
    assert "\ndef training_step(model, batch)" in model.read_text()
    doc = _scan(model, tmp_path)
    assert doc["verdict"] == "pass" and doc["causes"] == []
    # the schedule ran: a linear warm-up, so the learning rate rises over the first steps
    lrs = doc["runs"][0]["lrs"]
    assert lrs[0] < lrs[-1], lrs


def test_the_config_template_is_every_key_at_its_default(tmp_path):
    run_cli("init", tmp_path)
    assert yaml.safe_load((tmp_path / "nandoctor.yaml").read_text()) == DEFAULTS
