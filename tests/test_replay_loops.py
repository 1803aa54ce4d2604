"""`nandoctor replay --trust` of a script's bundle, over the loop shapes users write
(tests/scripts/loops/, one tiny script each; the NaN is born at net.py:11 on step 3): the replay
finds what `nandoctor run` found. And a traced step that never reaches its end (the script exits
or raises first, or the step runs past its bound) is still diagnosed from what was traced, with
`unfinished_step` saying why."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rich.console import Console

import nandoctor
from nandoctor.report import render
from nandoctor.report.console import print_report
from nandoctor.watcher import rerun

LOOPS = Path(__file__).parent / "scripts" / "loops"

SHAPES = [
    ("plain.py", []),
    ("accumulate.py", []),                       # optimizer step every 2 micro-batches
    ("scaler.py", []),                           # fp16 autocast + GradScaler
    ("scaler.py", ["--dtype", "bfloat16"]),      # bf16 autocast, the scaler disabled
    ("lbfgs.py", []),                            # optimizer.step(closure)
    ("gan.py", []),                              # two optimizers
    ("helper_step.py", []),                      # the step in another user module
    ("eval_between.py", []),                     # torch.no_grad() eval after each step
    ("main_argparse.py", ["--steps", "5"]),      # if __name__ == "__main__" + argparse
    ("iterable.py", []),                         # an IterableDataset generator through a DataLoader
    ("generator_loop.py", []),                   # next() on a Python generator
]


@pytest.fixture(scope="module")
def loops(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loops")
    shutil.copytree(LOOPS, folder, dirs_exist_ok=True)
    return folder


def _origin(event):
    line = event.user_source
    return (event.step, event.phase, event.op, f"{Path(line.file).name}:{line.line}" if line else None)


def _run_and_bundle(folder: Path, script: str, args: list[str], out: str):
    run = nandoctor.run_script(folder / script, args, out=folder / out, experiments=False)
    bundles = sorted((folder / out).iterdir())
    assert len(bundles) == 1, f"{script}: {len(bundles)} bundles"
    return run, bundles[0]


@pytest.mark.parametrize("script,args", SHAPES, ids=[f"{s[:-3]}{'-' + a[-1] if a else ''}" for s, a in SHAPES])
def test_replay_of_each_loop_shape_finds_the_runs_origin(loops, monkeypatch, script, args):
    monkeypatch.chdir(loops)
    run, bundle = _run_and_bundle(loops, script, args, f"bundles-{script[:-3]}-{len(args)}")
    ran = run.trace.runs[0].first_nonfinite
    assert _origin(ran) == (3, "forward", "aten.div.Tensor", "net.py:11")
    replay = nandoctor.replay(bundle, trust=True, experiments=False)
    event = replay.trace.runs[0].first_nonfinite
    assert _origin(event) == _origin(ran) and event.reproduced is True
    assert [c.id for c in replay.causes] == [c.id for c in run.causes]
    assert replay.causes[0].id == "unstable-op"              # 0/0 in the user's division
    assert replay.trace.runs[0].unfinished_step is None          # each of these steps ends where it should
    # The bundle's optimizer state (LBFGS's lists of tensors included) loads into the script's optimizer.
    assert not [note for note in replay.trace.notes if "optimizer state did not fit" in note]


@pytest.fixture(scope="module")
def plain_bundle(loops):
    run, bundle = _run_and_bundle(loops, "plain.py", [], "bundles-unfinished")
    return bundle


def _replay_with(loops: Path, bundle: Path, script_body: Path, monkeypatch):
    """Replay `bundle` (of plain.py) with plain.py's loop replaced by `script_body`'s: the user's
    own NaN check, added since, ends the step before its optimizer step."""
    original = (loops / "plain.py").read_text()
    shutil.copy(script_body, loops / "plain.py")
    monkeypatch.chdir(loops)
    try:
        return nandoctor.replay(bundle, trust=True, experiments=False)
    finally:
        (loops / "plain.py").write_text(original)


def test_a_step_the_script_exits_before_finishing_is_diagnosed_from_what_was_traced(loops, plain_bundle, monkeypatch):
    replay = _replay_with(loops, plain_bundle, LOOPS / "exits_on_nan.py", monkeypatch)
    run = replay.trace.runs[0]
    assert _origin(run.first_nonfinite) == (3, "forward", "aten.div.Tensor", "net.py:11")
    assert run.first_nonfinite.surfaced_in == "loss"        # the backward ran; the optimizer step never came
    assert run.unfinished_step.reason == "script-exited" and "loss is nan" in run.unfinished_step.detail
    assert run.unfinished_step.ops > 0
    doc = json.loads(render(replay.to_dict(), "json"))
    assert doc["runs"][0]["unfinished_step"]["reason"] == "script-exited"
    console = Console(record=True, width=160)
    print_report(doc, console)
    assert "The traced step did not end normally (script-exited" in console.export_text()


def test_a_step_the_script_raises_in_before_any_loss_names_the_first_nonfinite_op(loops, plain_bundle, monkeypatch):
    replay = _replay_with(loops, plain_bundle, LOOPS / "asserts_finite.py", monkeypatch)
    run = replay.trace.runs[0]
    assert _origin(run.first_nonfinite) == (3, "forward", "aten.div.Tensor", "net.py:11")
    assert run.first_nonfinite.surfaced_in == "op"           # no loss yet: the first non-finite op itself
    assert run.unfinished_step.reason == "script-raised" and "FloatingPointError" in run.unfinished_step.detail
    assert "unstable-op" in [c.id for c in replay.causes]


def test_a_step_the_script_leaves_and_then_runs_to_its_end_is_diagnosed(loops, plain_bundle, monkeypatch):
    replay = _replay_with(loops, plain_bundle, LOOPS / "breaks_on_nan.py", monkeypatch)
    run = replay.trace.runs[0]
    assert _origin(run.first_nonfinite) == (3, "forward", "aten.div.Tensor", "net.py:11")
    assert run.unfinished_step.reason == "script-ended" and run.unfinished_step.ops > 0


def test_a_step_past_its_time_bound_is_cut_and_diagnosed(loops, plain_bundle, monkeypatch):
    # The clock is read every TIME_CHECK_EVERY ops: every 4th here, and 1 ns is past at the 4th.
    monkeypatch.setattr(rerun, "TRACE_MAX_SECONDS", 1e-9)
    monkeypatch.setattr(rerun, "TRACE_MAX_OPS", 0)
    monkeypatch.setattr(rerun, "TIME_CHECK_EVERY", 4)
    monkeypatch.chdir(loops)
    replay = nandoctor.replay(plain_bundle, trust=True, experiments=False)
    run = replay.trace.runs[0]
    assert run.unfinished_step.reason == "trace-limit" and "1e-09 s (4 ops)" in run.unfinished_step.detail
    assert run.unfinished_step.ops == 4


def test_a_step_past_its_op_bound_is_cut_and_diagnosed(loops, plain_bundle, monkeypatch):
    # The bound stands in for a step that never reaches its end: tracing stops there, not at the
    # end of the script, and what was traced (the division at net.py:11 comes first) is judged.
    monkeypatch.setattr(rerun, "TRACE_MAX_OPS", 15)
    monkeypatch.chdir(loops)
    replay = nandoctor.replay(plain_bundle, trust=True, experiments=False)
    run = replay.trace.runs[0]
    assert run.unfinished_step.reason == "trace-limit" and "15 ops" in run.unfinished_step.detail
    assert run.unfinished_step.ops == 16
    assert _origin(run.first_nonfinite) == (3, "forward", "aten.div.Tensor", "net.py:11")


def test_a_loop_whose_own_nan_check_exits_before_the_step_gets_a_bundle_that_replays_the_origin(loops, monkeypatch):
    # `nandoctor run` checks a step at its optimizer step; this loop exits before it. The step is
    # checked when the script ends (its weights are still the ones it used), not reported as an
    # earlier step's optimizer blow-up, and its bundle's replay finds the op.
    monkeypatch.chdir(loops)
    run, bundle = _run_and_bundle(loops, "exits_on_nan.py", [], "bundles-own-check")
    ran = run.trace.runs[0].first_nonfinite
    assert (ran.step, ran.surfaced_in) == (3, "loss")
    replay = nandoctor.replay(bundle, trust=True, experiments=False)
    assert _origin(replay.trace.runs[0].first_nonfinite) == (3, "forward", "aten.div.Tensor", "net.py:11")
    assert replay.trace.runs[0].unfinished_step.reason == "script-exited"
    assert replay.causes[0].id == "unstable-op"
