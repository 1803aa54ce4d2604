"""Config: defaults, validation naming the key, and discovery precedence."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, strategies as st

from nandoctor.load.config import DEFAULTS, resolve_config
from nandoctor.errors import InputError
import json

from conftest import run_cli
from nandoctor.run.precision import parse_precision
from nandoctor.trace.vocab import ACCEPTED_PRECISION_NAMES as ACCEPTED_NAMES, Precision

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_default_config_matches_the_built_in_defaults():
    shipped = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    assert shipped == DEFAULTS


def test_precedence_pyproject_then_yaml_then_config_then_flags(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.nandoctor]\nsteps = 7\nseed = 3\nprecisions = ['fp32']\n")
    resolved = resolve_config(cwd=tmp_path)
    assert (resolved["steps"], resolved["seed"], resolved.sources["steps"]) == (7, 3, "pyproject.toml [tool.nandoctor]")
    (tmp_path / "nandoctor.yaml").write_text("steps: 9\n")
    resolved = resolve_config(cwd=tmp_path)
    assert (resolved["steps"], resolved["seed"], resolved.sources["steps"]) == (9, 3, "nandoctor.yaml")
    explicit = tmp_path / "ci.yaml"
    explicit.write_text("steps: 11\noptimizer: {name: sgd, lr: 0.1, momentum: 0.9}\n")
    resolved = resolve_config(explicit, cwd=tmp_path)
    assert resolved["steps"] == 11 and resolved["optimizer"]["name"] == "sgd"
    resolved = resolve_config(explicit, {"steps": 2, "lr": 0.5}, cwd=tmp_path)
    assert (resolved["steps"], resolved["optimizer"]["lr"], resolved.sources["optimizer.lr"]) == (2, 0.5, "command line")
    assert resolved.sources["seed"] == "pyproject.toml [tool.nandoctor]"
    assert resolved["precisions"] == ["32-true"]


@pytest.mark.parametrize("layer, message", [
    ({"optimizer": {"name": "lion"}}, "must be one of adamw, adam, sgd"),
    ({"optimizer": {"lr": -1}}, "'optimizer.lr' must be a number > 0"),
    ({"optimizer": {"betas": [0.9]}}, "list of two numbers"),
    ({"loss_scale": "auto"}, "must be dynamic, none or a positive number"),
    ({"experiments": {"enabeld": True}}, "unknown config key 'experiments.enabeld'"),
    ({"thresholds": {"update_ratio_high": "high"}}, "'thresholds.update_ratio_high' must be a finite number"),
    ({"device": "tpu"}, "must be auto, cpu, cuda or cuda:N"),
    ({"fail_on": "sometimes"}, "must be one of error, warning, never"),
    ({"precisions": []}, "non-empty list"),
])
def test_invalid_values_name_the_key_and_accepted_values(tmp_path, layer, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(layer))
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_config(path, cwd=tmp_path)


def test_numbers_written_as_yaml_strings_are_accepted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer: {lr: 1e-3}\nloss_scale: 1024\n")
    resolved = resolve_config(path, cwd=tmp_path)
    assert resolved["optimizer"]["lr"] == 1e-3 and resolved["loss_scale"] == 1024.0


@given(st.sampled_from(ACCEPTED_NAMES), st.sampled_from([str.upper, str.lower, lambda s: f"  {s} "]))
def test_every_accepted_precision_name_parses(name, transform):
    assert isinstance(parse_precision(transform(name)), Precision)


@given(st.text(min_size=1, max_size=12))
def test_unknown_precision_names_are_input_errors(text):
    if text.strip().lower() in ACCEPTED_NAMES:
        return
    with pytest.raises(InputError, match="accepted values are 32-true, 16-mixed"):
        parse_precision(text)


def test_discovery_walks_up_to_the_repository_root(tmp_path):
    repo = tmp_path / "repo"
    sub = repo / "src" / "pkg"
    sub.mkdir(parents=True)
    (repo / ".git").mkdir()
    (repo / "pyproject.toml").write_text("[tool.nandoctor]\nsteps = 9\n")
    (repo / "src" / "nandoctor.yaml").write_text("seed: 4\n")
    (tmp_path / "nandoctor.yaml").write_text("steps: 99\n")      # above the repository root: never read
    result = run_cli("config", "-f", "json", cwd=sub)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["values"]["steps"] == 9 and doc["values"]["seed"] == 4
    assert doc["sources"]["steps"] == "../../pyproject.toml [tool.nandoctor]"
    assert doc["sources"]["seed"] == "../nandoctor.yaml"
