"""`nandoctor run`'s fast path (entry.py + run_command.parse_run_args) against typer's own parse.

The fast path starts the user's script without importing typer; it may decline a command line
(typer then parses it), but a line it reads must give run_command exactly what typer gives.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import nandoctor.cli.commands as cli
from nandoctor.cli.run_command import RUN_OPTIONS, module_args_last, parse_run_args


class _Report:
    exit_code = 0
    interrupted = False


def typer_parse(argv: list[str], monkeypatch: Any) -> Optional[dict[str, Any]]:
    """What typer passes to run_command for `nandoctor run ARGV`; None when typer rejects the line."""
    seen: list[dict[str, Any]] = []

    def record(**options: Any) -> _Report:
        seen.append(options)
        return _Report()

    monkeypatch.setattr(cli, "run_command", record)
    result = CliRunner().invoke(cli.app, ["run", *module_args_last(argv)])   # as entry.py hands it over
    if not seen:
        assert result.exit_code == 2, result.output
        return None
    options = dict(seen[0])
    options["script_and_args"] = list(options["script_and_args"] or [])
    return options


SPELLED = [
    ["train.py"],
    ["train.py", "--lr", "3e-4", "--quiet", "-q", "--", "x"],
    ["-q", "-v", "--no-experiments", "train.py", "--format", "json"],
    ["--format", "json", "-o", "r.json", "--out", "b", "--html", "r.html", "--trace", "t.json", "train.py"],
    ["--format=markdown", "--output=r.md", "--check-every=4", "--stats-every", "0", "train.py", "a", "b"],
    ["--max-seconds", "2.5", "--restart-over-mib", "1e3", "--snapshot-every", "0", "train.py"],
    ["--max-seconds", "-1", "--restart-over-mib", ".5", "train.py"],
    ["--on-nonfinite", "rollback", "--rollback-every", "20", "--rollback-budget", "0", "train.py"],
    ["--on-spike", "skip", "--fail-on", "warning", "-c", "cfg.yaml", "train.py"],
    ["-m", "pkg.train", "--lr", "3"],
    ["-m", "pkg.train", "-q"],
    ["-q", "-m", "pkg.train", "--config", "c.yaml", "--", "x"],
    ["--module", "pkg.train", "--"],
    ["--module=pkg.train"],
    ["--check-every", "+3", "train.py"],
    ["--check-every", "007", "train.py"],
    ["-", "train.py"],
]
DECLINED = [
    [], ["--help"], ["-h"], ["-qv", "train.py"], ["--", "train.py"], ["--lr", "3", "train.py"],
    ["--check-every", "x", "train.py"], ["--check-every", "1.0", "train.py"], ["--max-seconds", "inf", "train.py"],
    ["--format", "-q", "train.py"], ["--quiet=1", "train.py"], ["--out"], ["--out", "", "train.py"],
    ["-ojson", "train.py"], ["-q"],
]


@pytest.mark.parametrize("argv", SPELLED, ids=[" ".join(a) for a in SPELLED])
def test_fast_path_reads_what_typer_reads(argv, monkeypatch):
    fast = parse_run_args(argv)
    assert fast is not None, f"the fast path declined {argv}"
    assert fast == typer_parse(argv, monkeypatch)


@pytest.mark.parametrize("argv", DECLINED, ids=[" ".join(a) or "(nothing)" for a in DECLINED])
def test_fast_path_leaves_the_rest_to_typer(argv):
    assert parse_run_args(argv) is None


_WORDS = st.sampled_from([flag for option in RUN_OPTIONS for flag in option.flags]
                         + ["train.py", "--", "-", "--lr", "-x", "3", "-1", "0.5", "1e3", "x", "json", "", "a=b",
                            "--format=json", "--check-every=2", "--quiet=1", "inf", "+2", " 3"])


@settings(max_examples=150, deadline=None)
@given(st.lists(_WORDS, max_size=7))
def test_fast_path_never_disagrees_with_typer(words):
    fast = parse_run_args(words)
    if fast is None:
        return
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert fast == typer_parse(words, monkeypatch)


def test_words_after_the_module_are_the_modules():
    """As after `python -m MODULE` (the option's help says so): nandoctor's own option names after
    it are the module's arguments, on both paths."""
    argv = ["-q", "-m", "pkg.train", "--config", "c.yaml", "-q"]
    fast = parse_run_args(argv)
    assert fast["module"] == "pkg.train" and fast["config"] is None
    assert fast["script_and_args"] == ["--config", "c.yaml", "-q"]
    assert module_args_last(["-qv", *argv]) == ["-qv", "-q", "-m", "pkg.train", "--", "--config", "c.yaml", "-q"]


def test_guarded_run_starts_the_script_without_typer(tmp_path: Path):
    """The command a guarded run starts with imports neither typer nor pydantic (start-up time and
    memory, issue 20); the script sees its own argv."""
    script = tmp_path / "train.py"
    script.write_text("import sys\nprint('typer' in sys.modules, 'pydantic' in sys.modules, sys.argv[1:])\n")
    done = subprocess.run([sys.executable, "-m", "nandoctor", "run", "-q", "--no-experiments", str(script), "--lr", "3"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False False ['--lr', '3']"


@pytest.mark.parametrize("first", [[], ["-qv"]], ids=["fast path", "typer"])
def test_module_gets_every_word_after_it(tmp_path: Path, first):
    """`nandoctor run -m pkg.train --config c.yaml`, the help's own example: --config is the
    module's, on the fast path and through typer (a combined -qv sends the line to typer)."""
    (tmp_path / "trainpkg").mkdir()
    (tmp_path / "trainpkg" / "__init__.py").write_text("")
    (tmp_path / "trainpkg" / "train.py").write_text("import sys\nprint(sys.argv[1:])\n")
    done = subprocess.run([sys.executable, "-m", "nandoctor", "run", *first, "--no-experiments", "-m", "trainpkg.train",
                           "--config", "c.yaml", "-q"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "['--config', 'c.yaml', '-q']"
