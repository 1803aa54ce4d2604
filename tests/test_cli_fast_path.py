"""The fast path of `nandoctor run` and `nandoctor scan` (cli/entry.py, cli/options.py) against
typer's own parse.

The fast path starts without importing typer; it may decline a command line (typer then parses
it), but a line it reads must give the command's body exactly what typer gives.
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
from nandoctor.cli.scan_command import SCAN_OPTIONS, parse_scan_args


class _Report:
    exit_code = 0
    interrupted = False


def typer_parse(argv: list[str], monkeypatch: Any, command: str = "run") -> Optional[dict[str, Any]]:
    """What typer passes to the command's body for `nandoctor COMMAND ARGV`; None when typer rejects the line."""
    seen: list[dict[str, Any]] = []

    def record(**options: Any) -> _Report:
        seen.append(options)
        return _Report()

    # The typer commands call the body they were built with: rebuild them around the recorder.
    monkeypatch.setattr(cli, "app", _app_recording(command, record))
    words = module_args_last(argv) if command == "run" else argv      # as entry.py hands it over
    result = CliRunner().invoke(cli.app, [command, *words])
    if not seen:
        assert result.exit_code == 2, result.output
        return None
    options = dict(seen[0])
    if command == "run":
        options["script_and_args"] = list(options["script_and_args"] or [])
    return options


def _app_recording(command: str, record: Any) -> Any:
    import typer
    from nandoctor.cli.run_command import RUN
    from nandoctor.cli.scan_command import SCAN
    app = typer.Typer()
    spec = RUN if command == "run" else SCAN
    settings = {"allow_interspersed_args": False, "ignore_unknown_options": True} if command == "run" else {}
    app.command(context_settings=settings)(cli._typer_command(spec, record))
    app.command("other")(lambda: None)       # two commands: `app COMMAND ...` as the real app reads it
    return app


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


def test_words_after_the_module_are_the_modules():
    """As after `python -m MODULE` (the option's help says so): nandoctor's own option names after
    it are the module's arguments, on both paths."""
    argv = ["-q", "-m", "pkg.train", "--config", "c.yaml", "-q"]
    fast = parse_run_args(argv)
    assert fast["module"] == "pkg.train" and fast["config"] is None
    assert fast["script_and_args"] == ["--config", "c.yaml", "-q"]
    assert module_args_last(["-qv", *argv]) == ["-qv", "-q", "-m", "pkg.train", "--", "--config", "c.yaml", "-q"]


def test_a_lone_dash_is_the_script_on_both_paths(monkeypatch):
    """`-` is SCRIPT (a positional, as click reads it): an -m after it is the script's argument, and
    typer must not be handed a `--` after it (hypothesis found ['-', '-m', '-m'] disagreeing)."""
    argv = ["-", "-m", "-m"]
    assert module_args_last(argv) == argv
    fast = parse_run_args(argv)
    assert fast["script_and_args"] == argv and fast["module"] is None
    assert fast == typer_parse(argv, monkeypatch, "run")


SCAN_SPELLED = [
    ["model.py"],
    ["model.py", "--steps", "5", "-p", "fp16", "--precision", "bf16-mixed", "--no-experiments"],
    ["-q", "--format", "json", "-o", "r.json", "model.py", "--lr=0.5", "--seed", "3", "--compile", "--trust"],
    ["--device", "cpu", "--threads", "auto", "--max-seconds", "30", "model.py", "--checkpoint", "c.pt", "-v"],
    ["model.py", "--html", "r.html", "--trace", "t.json", "--fail-on", "warning", "-c", "cfg.yaml"],
]
SCAN_DECLINED = [[], ["--help"], ["a.py", "b.py"], ["model.py", "--bogus"], ["model.py", "--steps", "x"],
                 ["--", "model.py"], ["-", "--steps", "2"], ["model.py", "-qv"], ["model.py", "--steps"]]


@pytest.mark.parametrize("argv", SCAN_SPELLED, ids=[" ".join(a) for a in SCAN_SPELLED])
def test_scan_fast_path_reads_what_typer_reads(argv, monkeypatch):
    fast = parse_scan_args(argv)
    assert fast is not None, f"the fast path declined {argv}"
    assert fast == typer_parse(argv, monkeypatch, "scan")


@pytest.mark.parametrize("argv", SCAN_DECLINED, ids=[" ".join(a) or "(nothing)" for a in SCAN_DECLINED])
def test_scan_fast_path_leaves_the_rest_to_typer(argv):
    assert parse_scan_args(argv) is None


_SCAN_WORDS = st.sampled_from([flag for option in SCAN_OPTIONS for flag in option.flags]
                              + ["model.py", "other.py", "--", "-", "3", "-1", "0.5", "fp16", "x", "", "--steps=2"])


@pytest.mark.parametrize("command", ["run", "scan"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fast_path_never_disagrees_with_typer(command, data):
    words = data.draw(st.lists(_WORDS if command == "run" else _SCAN_WORDS, max_size=7))
    fast = (parse_run_args if command == "run" else parse_scan_args)(words)
    if fast is None:
        return
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert fast == typer_parse(words, monkeypatch, command)


def test_guarded_run_starts_the_script_without_typer(tmp_path: Path):
    """The command a guarded run starts with imports neither typer nor pydantic (start-up time and
    memory, issue 20); the script sees its own argv."""
    script = tmp_path / "train.py"
    script.write_text("import sys\nprint('typer' in sys.modules, 'pydantic' in sys.modules, sys.argv[1:])\n")
    done = subprocess.run([sys.executable, "-m", "nandoctor", "run", "-q", "--no-experiments", str(script), "--lr", "3"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False False ['--lr', '3']"


def test_scan_runs_without_typer(tmp_path: Path):
    """The CI gate's common line: the model file is imported with neither typer nor pydantic loaded."""
    model = tmp_path / "model.py"
    model.write_text("import sys, torch\nprint('typer' in sys.modules, 'pydantic' in sys.modules, file=sys.stderr)\n"
                     "def build_model():\n    return torch.nn.Linear(4, 2)\n"
                     "def get_batch(step):\n    return torch.randn(8, 4), torch.randint(0, 2, (8,))\n")
    done = subprocess.run([sys.executable, "-m", "nandoctor", "scan", str(model), "--steps", "2", "-q", "--no-experiments",
                           "--format", "json"], capture_output=True, text=True, cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "False False" in done.stderr and '"verdict"' in done.stdout


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
