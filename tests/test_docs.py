"""The documentation site's reference pages against the code they describe: a command, option,
config key, cause id, exit code, JSON field, bundle field or API name that exists in the code
but not on its page (or the other way round, where a page lists things) fails here. The site
itself is built by `.ci/run` with `mkdocs build --strict` (links, anchors, nav).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

from conftest import ROOT

DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"


def page(name: str) -> str:
    return (REFERENCE / name).read_text(encoding="utf-8")


def sections(text: str, level: str = "##") -> dict[str, str]:
    """Heading text -> the text under it, up to the next heading of the same or a higher level."""
    depth = len(level)
    found: dict[str, str] = {}
    parts = re.split(rf"^(#{{1,{depth}}} .*)$", text, flags=re.MULTILINE)
    for heading, body in zip(parts[1::2], parts[2::2]):
        if heading.startswith(level + " "):
            found[heading[depth + 1:].strip()] = body
    return found


def table_keys(text: str) -> list[str]:
    """The code span that opens each table row's first cell: | `key` | ... |"""
    return re.findall(r"^\| \[?`([^`]+)`", text, flags=re.MULTILINE)


def has_token(text: str, token: str) -> bool:
    """`--config` as a whole option, not as the start of `--config-file`."""
    return re.search(rf"(?<![\w-]){re.escape(token)}(?![\w-])", text) is not None


def code_spans(text: str) -> set[str]:
    """Every word inside a `code span` (field names are written as `name`, `name[]` or `a.b`)."""
    words: set[str] = set()
    for span in re.findall(r"`([^`]+)`", text):
        for word in re.findall(r"[A-Za-z_][\w.]*", span):
            words.update([word, *word.split(".")])
    return words


# ---- the command line ------------------------------------------------------------------------

# Commands documented ahead of their code. Once a command here exists, the test below asks for
# its removal from this set, so that it is checked like every other.
DOCUMENTED_AHEAD: set[str] = set()


def _cli():
    from nandoctor.cli import app
    return typer.main.get_command(app)


def _command_sections() -> dict[str, str]:
    found = {}
    for heading, body in sections(page("cli.md")).items():
        match = re.fullmatch(r"`nandoctor (\w+)`", heading)
        if match:
            found[match.group(1)] = body
    return found


def test_every_command_has_a_section_and_every_section_a_command():
    group = _cli()
    documented = _command_sections()
    assert set(group.commands) <= set(documented), f"commands missing from docs/reference/cli.md: " \
        f"{sorted(set(group.commands) - set(documented))}"
    stale = set(documented) - set(group.commands) - DOCUMENTED_AHEAD
    assert not stale, f"docs/reference/cli.md documents commands that do not exist: {sorted(stale)}"
    landed = DOCUMENTED_AHEAD & set(group.commands)
    assert not landed, f"nandoctor {', '.join(sorted(landed))} exists now: remove it from DOCUMENTED_AHEAD " \
        "in tests/test_docs.py so that its options are checked"


@pytest.mark.parametrize("name", sorted(_cli().commands))
def test_every_option_of_a_command_is_in_its_section(name):
    command = _cli().commands[name]
    body = _command_sections()[name]
    synopsis = re.search(rf"^nandoctor {name} .*$", body, flags=re.MULTILINE)
    assert synopsis, f"the section of nandoctor {name} has no synopsis line"
    # typer may vendor its own click, so parameters are told apart by click's own tag, not by class.
    for param in command.params:
        if param.param_type_name == "argument":
            metavar = param.metavar or param.name.upper()
            assert metavar in synopsis.group(0), f"nandoctor {name}'s argument {metavar} is not in its synopsis"
        else:
            for opt in param.opts + param.secondary_opts:
                assert has_token(body, opt), f"nandoctor {name} {opt} is not documented in docs/reference/cli.md"


def test_the_global_options_are_documented():
    body = sections(page("cli.md"))["Global options"]
    for param in _cli().params:
        for opt in param.opts + param.secondary_opts:
            assert has_token(body, opt), opt
    assert has_token(body, "--help") and has_token(body, "-h")


# ---- configuration ---------------------------------------------------------------------------

def _config_keys() -> dict[str, Any]:
    """Every accepted dotted key -> its built-in default (absent: no default, the optimizer's own)."""
    from nandoctor.load.config import DEFAULTS, OPTIMIZER_KEYS, TOP_LEVEL
    keys: dict[str, Any] = {}

    def walk(values: dict[str, Any], prefix: str) -> None:
        for key, value in values.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                keys[f"{prefix}{key}"] = value
    walk(DEFAULTS, "")
    for key in OPTIMIZER_KEYS:
        keys.setdefault(f"optimizer.{key}", inspect.Parameter.empty)
    for key in TOP_LEVEL:
        assert key in DEFAULTS
    return keys


def _cell_value(cell: str) -> Any:
    import yaml
    text = cell.strip().strip("`")
    if text == "—":
        return inspect.Parameter.empty
    try:
        return float(text)
    except ValueError:
        return yaml.safe_load(text)


def test_every_config_key_is_on_the_config_page_with_its_default():
    text = page("configuration.md")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([\w.]+)` \| ([^|]+) \|", text, flags=re.MULTILINE)}
    keys = _config_keys()
    assert set(keys) == set(rows), f"missing: {sorted(set(keys) - set(rows))}; not config keys: " \
        f"{sorted(set(rows) - set(keys))}"
    for key, default in keys.items():
        assert _cell_value(rows[key]) == default, f"{key}: the page says {rows[key].strip()}, the code {default!r}"


def test_the_shipped_config_files_name_the_same_keys():
    import yaml
    from nandoctor.load.config import DEFAULTS
    for path in (ROOT / "configs" / "default.yaml", ROOT / "nandoctor" / "templates" / "nandoctor.yaml"):
        assert yaml.safe_load(path.read_text()) == DEFAULTS, path


# ---- cause ids -------------------------------------------------------------------------------

def test_every_cause_id_is_in_the_table_and_nothing_else():
    from nandoctor.diagnose import rule_ids
    listed = table_keys(page("causes.md").split("## Each cause")[0])
    assert sorted(listed) == sorted(rule_ids()), f"missing: {sorted(set(rule_ids()) - set(listed))}; " \
        f"unknown: {sorted(set(listed) - set(rule_ids()))}"


def test_the_generated_cause_sections_match_the_rules_docstrings():
    spec = importlib.util.spec_from_file_location("cause_page", ROOT / "tools" / "cause_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    current = module.PAGE.read_text(encoding="utf-8")
    assert current == module.page_text(current), "docs/reference/causes.md is out of date: run " \
        "python3 tools/cause_page.py"


# ---- exit codes, formats, JSON, bundle, API, model file --------------------------------------

def test_every_exit_code_is_in_the_table():
    from nandoctor.errors import ExitCode
    rows = re.findall(r"^\| (\d+) \| (`\w+`|—) \|", page("exit-codes.md"), flags=re.MULTILINE)
    documented = {int(code): name.strip("`") for code, name in rows}
    assert {code.value: code.name for code in ExitCode}.items() <= documented.items()
    assert 130 in documented, "Ctrl-C's exit status"


def test_every_output_format_is_on_the_formats_page():
    from nandoctor.report import FORMATS
    assert sorted(table_keys(page("formats.md"))) == sorted(FORMATS)


def _schema_fields() -> dict[str, set[str]]:
    schema = json.loads((ROOT / "nandoctor" / "report" / "schema.json").read_text())
    props = schema["properties"]
    fields = {"top level": set(props)}
    for name, prop in props.items():
        nested = prop.get("properties") or (prop.get("items") or {}).get("properties")
        if nested:
            fields[name] = set(nested)
    return fields


def test_every_schema_property_is_on_the_json_page():
    text = page("json-report.md")
    words = code_spans(text)
    for where, names in _schema_fields().items():
        missing = sorted(n for n in names if n not in words)
        assert not missing, f"schema.json {where} properties missing from docs/reference/json-report.md: {missing}"
    for name in _schema_fields()["top level"]:
        assert re.search(rf"^\| [^|]*`{name}(\[\])?`", text, flags=re.MULTILINE), f"`{name}` has no row"


def test_every_manifest_field_and_file_of_the_crash_bundle_is_documented():
    from nandoctor.load import bundle
    text = page("crash-bundle.md")
    words = code_spans(text)
    missing = [f.name for f in dataclasses.fields(bundle.BundleManifest) if f.name not in words]
    assert not missing, f"manifest fields missing from docs/reference/crash-bundle.md: {missing}"
    for name in (bundle.MANIFEST_NAME, *bundle.TENSOR_FILES):
        assert f"`{name}`" in text, name
    for check in bundle.CHECKS:
        assert f"`{check}`" in text, check


def test_every_public_name_and_watch_option_is_on_the_api_page():
    import nandoctor
    from nandoctor.watcher.guard import Watch
    text = page("python-api.md")
    for name in nandoctor.__all__:
        assert f"nandoctor.{name}" in text, name
    options = [p for p in inspect.signature(Watch.__init__).parameters if p not in ("self", "model", "optimizer")]
    table = sections(text)["`nandoctor.watch` options"]
    rows = {key for row in re.findall(r"^\| ([^|]+) \|", table, flags=re.MULTILINE)
            for key in re.findall(r"`(\w+)`", row)}
    assert set(options) <= rows, f"watch options missing from the table: {sorted(set(options) - rows)}"


def test_every_model_file_function_is_in_the_contract():
    from nandoctor.load.model_file import OPTIONAL, REQUIRED
    listed = [re.match(r"\w+", key).group(0) for key in table_keys(page("model-file.md"))]
    assert sorted(listed) == sorted(REQUIRED + OPTIONAL)


# ---- the README -------------------------------------------------------------------------------

README = (ROOT / "README.md").read_text(encoding="utf-8")
SETUP_COMMANDS = '''```bash
# 1. Set up and run a bundled training script that goes NaN:
python3 -m pip install "torch==2.13.0" -e . && nandoctor run sample_models/train_classifier.py
# 2. Set up and run the tests (what CI runs, via .ci/run):
python3 -m pip install "torch==2.13.0" -e ".[test]" && python3 -m pytest
```'''


def test_the_readme_starts_with_the_two_set_up_commands_and_stays_short():
    first_block = README[README.index("```"):README.index("```", README.index("```") + 3) + 3]
    assert first_block == SETUP_COMMANDS
    assert len(README.splitlines()) < 200
    assert "nandoctor scan " in README and "torch==2.13.0` is pinned" in README


def test_ci_ends_with_the_readme_test_command_after_building_the_site():
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip() and not line.startswith("#")]
    test_command = SETUP_COMMANDS.splitlines()[4]
    assert lines[-1].replace(" -q", "") == test_command
    build = next(i for i, line in enumerate(lines) if "mkdocs build --strict" in line)
    assert build < len(lines) - 1


def test_the_readme_links_point_at_pages_that_exist():
    for target in re.findall(r"\]\(((?:docs/)[^)#]+)(?:#[^)]*)?\)", README):
        assert (ROOT / target).is_file(), target


# ---- Markdown that renders alike on GitHub and on the site ------------------------------------

LIST_ITEM = re.compile(r"^(\s*)([-*]|\d+\.)\s")


@pytest.mark.parametrize("path", sorted(DOCS.rglob("*.md")), ids=lambda p: str(p.relative_to(DOCS)))
def test_lists_render_on_the_site_as_on_github(path):
    """Python-Markdown (mkdocs) needs a blank line before a list and 4-space nesting; GitHub
    needs neither, so a page can look right there and run a list into its paragraph on the site."""
    lines = path.read_text(encoding="utf-8").splitlines()
    in_code = False
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
        item = LIST_ITEM.match(line)
        if in_code or not item:
            continue
        indent = len(item.group(1))
        assert indent % 4 == 0, f"{path.name}:{number}: a nested list item needs 4 spaces per level"
        previous = lines[number - 2] if number > 1 else ""
        if previous.strip() and not LIST_ITEM.match(previous) and len(previous) - len(previous.lstrip()) <= indent:
            pytest.fail(f"{path.name}:{number}: a list needs a blank line after the paragraph before it")
