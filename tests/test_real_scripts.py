"""`nandoctor run` on unmodified training scripts (sample_models/scripts/expected.yaml).

Each entry is a folder holding a train.py that re-creates a public training script's loop and
failure idiom (nanoGPT, pytorch/examples, minGPT, a Hugging Face Trainer, Lightning). The test
copies the folder, runs `python -m nandoctor run --format json -o OUT --out BUNDLES train.py ARGS`
in the copy, and checks the exit code, the verdict, the top cause, that the first non-finite
value and the top cause point into the entry's own files (never site-packages, never nandoctor),
and that a healthy script's own stdout passes through.

The selected entries run two at a time (one thread each) when the first test asks for them, so
the file stays within about 90 s on two cores.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

pytestmark = pytest.mark.scripts

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "sample_models" / "scripts"
ENTRIES: list[dict[str, Any]] = yaml.safe_load((SCRIPTS / "expected.yaml").read_text())
TIMEOUT_S = 240
WORKERS = 2


@dataclass(repr=False)
class Outcome:
    entry: dict[str, Any]
    folder: Path
    returncode: int
    stdout: str
    stderr: str
    report: Optional[dict[str, Any]]

    def __repr__(self) -> str:
        return f"<run of {self.entry['name']}>"

    def context(self) -> str:
        return f"exit {self.returncode}; stderr tail:\n" + "\n".join(self.stderr.strip().splitlines()[-15:])


def run_entry(entry: dict[str, Any], base: Path) -> Outcome:
    folder = base / entry["name"]
    shutil.copytree(SCRIPTS / entry["dir"], folder)
    out, bundles = base / f"{entry['name']}.json", base / f"{entry['name']}-bundles"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(base / "hf_home"),
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "nandoctor", "run", "--format", "json", "-o", str(out), "--out", str(bundles),
           "train.py", *map(str, entry["args"])]
    try:
        proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        text = lambda s: s.decode(errors="replace") if isinstance(s, bytes) else (s or "")
        code, stdout, stderr = -1, text(exc.stdout), text(exc.stderr) + f"\n[killed after {TIMEOUT_S} s]"
    report = json.loads(out.read_text()) if out.exists() else None
    return Outcome(entry, folder, code, stdout, stderr, report)


_outcomes: dict[str, Outcome] = {}


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[str, Outcome]:
    """Run every entry selected in this session (not only the first test's), two at a time."""
    wanted = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if item.module is sys.modules[__name__] and callspec and "entry" in callspec.params:
            name = callspec.params["entry"]["name"]
            if name not in wanted and name not in _outcomes:
                wanted.append(name)
    base = tmp_path_factory.mktemp("scripts")
    by_name = {e["name"]: e for e in ENTRIES}
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for outcome in pool.map(lambda name: run_entry(by_name[name], base), wanted):
            _outcomes[outcome.entry["name"]] = outcome
    return _outcomes


def source_file(location: Optional[str], folder: Path) -> Optional[Path]:
    """'path:line' -> the resolved path (relative paths are relative to the script's folder)."""
    if not location:
        return None
    match = re.match(r"(.+?)(?::\d+)?$", location)
    path = Path(match.group(1))
    return (path if path.is_absolute() else folder / path).resolve()


def assert_own_file(location: Optional[str], outcome: Outcome, what: str) -> None:
    path = source_file(location, outcome.folder)
    assert path is not None, f"{what} is missing\n{outcome.context()}"
    text = str(path)
    assert "site-packages" not in text and not path.is_relative_to(ROOT / "nandoctor"), \
        f"{what} points outside the user's files: {location}"
    assert path.is_relative_to(outcome.folder.resolve()), f"{what} is not in the script's folder: {location}"
    relative = path.relative_to(outcome.folder.resolve()).as_posix()
    assert relative in outcome.entry["files"], f"{what} is {relative}, expected one of {outcome.entry['files']}"


def params(healthy: bool) -> list[Any]:
    return [pytest.param(e, id=e["name"]) for e in ENTRIES if bool(e["healthy"]) is healthy]


@pytest.mark.parametrize("entry", params(healthy=False))
def test_failing_script_is_diagnosed_in_its_own_files(entry, outcomes):
    outcome = outcomes[entry["name"]]
    assert outcome.returncode == 1, outcome.context()
    report = outcome.report
    assert report is not None, f"no JSON report\n{outcome.context()}"
    assert report["verdict"] == "fail"
    causes = [c["id"] for c in report["causes"]]
    assert causes and causes[0] in entry["top"], f"top causes {causes[:3]}, expected one of {entry['top']}"
    event = report.get("first_nonfinite")
    assert event, f"no first_nonfinite in the report; causes {causes[:3]}"
    assert_own_file(event.get("user_source"), outcome, "first_nonfinite.user_source")
    assert_own_file(report["causes"][0].get("file"), outcome, "causes[0].file")


@pytest.mark.parametrize("entry", params(healthy=True))
def test_healthy_script_passes_and_keeps_its_output(entry, outcomes):
    outcome = outcomes[entry["name"]]
    assert outcome.returncode == 0, outcome.context()
    assert outcome.report is not None, f"no JSON report\n{outcome.context()}"
    assert outcome.report["verdict"] == "pass", [c["id"] for c in outcome.report["causes"]]
    if entry.get("precision"):
        assert [run["precision"] for run in outcome.report["runs"]] == [entry["precision"]]
    assert re.search(entry["stdout"], outcome.stdout), \
        f"the script's own output did not pass through: {entry['stdout']!r} not in\n{outcome.stdout[-1500:]}"
