"""`nandoctor run SCRIPT ARGS`: unmodified training scripts under the guard, through the CLI in a
subprocess (as a user runs it), and the replay of the bundles it writes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

SCRIPTS = Path(__file__).parent / "scripts"
ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "nandoctor" / "report" / "schema.json").read_text())


def nandoctor(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "nandoctor", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    """A copy of the scripts: nandoctor never modifies an input file, and bundles land in tmp."""
    target = tmp_path / "scripts"
    shutil.copytree(SCRIPTS, target)
    return target


def run_json(scripts: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = scripts / "report.json"
    result = nandoctor("run", "--format", "json", "-o", str(out), *args, cwd=scripts)
    assert out.exists(), result.stderr[-3000:]
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, SCHEMA)
    return result, doc


def test_a_healthy_script_runs_as_python_would_and_its_exit_code_passes_through(scripts):
    result = nandoctor("run", "echo_env.py", "--code", "3", "-o", "x", cwd=scripts)
    assert result.returncode == 3, result.stderr[-2000:]
    # __main__, its own argv (nandoctor's options never reach it), its folder first on sys.path
    assert "name=__main__ argv=['--code', '3', '-o', 'x'] path0=scripts" in result.stdout
    assert "final loss" in result.stdout
    assert "nandoctor run PASS" in result.stderr          # the report comes after, on stderr
    assert not (scripts / "nandoctor-bundles").exists()


def test_log_of_softmax_is_named_at_the_users_line_with_a_bundle_that_replays(scripts):
    shutil.copy(ROOT / "sample_models" / "train_classifier.py", scripts / "train_classifier.py")
    result, doc = run_json(scripts, "train_classifier.py", "--epochs", "6")
    assert result.returncode == 1
    assert doc["command"] == "run" and doc["verdict"] == "fail"
    top = doc["causes"][0]
    assert top["id"] == "unstable-op" and top["file"] == "train_classifier.py"
    assert "log_softmax" in top["fix"]
    event = doc["first_nonfinite"]
    assert event["op"] == "aten.log.default" and event["user_source"].startswith("train_classifier.py:")
    assert doc["loop"]["optimizer_built"].startswith("train_classifier.py:")
    bundle = doc["script"]["bundle"]
    assert bundle and (scripts / bundle / "manifest.json").exists()
    assert doc["script"]["stopped_at_step"] == event["step"]

    refused = nandoctor("replay", bundle, cwd=scripts)
    assert refused.returncode == 2 and "--trust" in refused.stderr and "Traceback" not in refused.stderr
    out = scripts / "replay.json"
    replay = nandoctor("replay", bundle, "--trust", "--format", "json", "-o", str(out), cwd=scripts)
    assert replay.returncode == 1, replay.stderr[-3000:]
    again = json.loads(out.read_text())
    assert again["command"] == "replay" and again["causes"][0]["id"] == "unstable-op"
    assert again["first_nonfinite"]["user_source"] == event["user_source"]
    assert again["first_nonfinite"]["step"] == event["step"]


def test_nan_targets_from_a_dataloader_are_data_with_the_dataset_index(scripts):
    result, doc = run_json(scripts, "nan_targets.py")
    assert result.returncode == 1
    top = doc["causes"][0]
    assert top["id"] == "data-nonfinite" and top["file"] == "nan_targets.py"
    assert "dataset indices 200" in doc["first_nonfinite"]["detail"]
    assert doc["first_nonfinite"]["entered_from"] == "data"


def test_a_loss_that_raises_on_a_nan_row_leaves_a_data_finding_and_a_bundle(scripts):
    result, doc = run_json(scripts, "bce_nan_row.py")
    assert result.returncode == 1
    top = doc["causes"][0]
    assert top["id"] == "data-nonfinite", doc["causes"]
    assert "dataset indices 300" in doc["first_nonfinite"]["detail"]
    assert top["file"] == "bce_nan_row.py"              # the line where the batch reached the model
    assert doc["script"]["bundle"]


def test_a_hand_written_update_with_no_optimizer_is_guarded(scripts):
    result, doc = run_json(scripts, "handwritten_sgd.py", "--lr", "0.5")
    assert result.returncode == 1
    assert doc["loop"]["hand_written_update"] is True
    assert doc["causes"][0]["id"] == "unstable-op"
    assert doc["first_nonfinite"]["op"] == "aten.sqrt.default"
    assert doc["first_nonfinite"]["user_source"].startswith("handwritten_sgd.py:")


def test_the_scripts_own_exception_is_a_finding_at_its_line(scripts):
    result, doc = run_json(scripts, "raises.py")
    assert result.returncode == 1
    top = doc["causes"][0]
    assert top["id"] == "user-error" and top["file"] == "raises.py"
    assert "learning-rate table" in " ".join(top["evidence"])


def test_a_module_runs_with_dash_m(scripts):
    result, doc = run_json(scripts, "-m", "pkg.train", "a", "b")
    assert "module name=__main__ argv=['a', 'b']" in result.stderr + result.stdout
    assert doc["causes"][0]["id"] == "unstable-op"
    assert doc["first_nonfinite"]["user_source"].startswith(os.path.join("pkg", "train.py"))


def test_json_on_stdout_stays_one_document_while_the_script_prints(scripts):
    result = nandoctor("run", "--format", "json", "echo_env.py", cwd=scripts)
    assert result.returncode == 0
    doc = json.loads(result.stdout)            # the script's prints went to stderr
    assert doc["verdict"] == "pass" and "final loss" in result.stderr


def test_max_seconds_stops_a_long_healthy_script_at_a_step_boundary(scripts):
    result, doc = run_json(scripts, "--max-seconds", "2", "slow_healthy.py")
    assert result.returncode == 0
    assert doc["runs"][0]["status"] == "timeout" and doc["runs"][0]["steps_run"] > 0


@pytest.mark.parametrize("args, says", [
    (["missing.py"], "does not exist"),
    ([], "needs a training script"),
    (["-m", "no_such_module_xyz"], "no module named"),
])
def test_bad_input_is_one_paragraph_and_exit_2(scripts, args, says):
    result = nandoctor("run", *args, cwd=scripts)
    assert result.returncode == 2
    assert says in result.stderr and "Traceback" not in result.stderr


def test_under_torchrun_the_origin_rank_reports_and_every_rank_stops(scripts):
    """A plain DDP script (gloo): rank 1's data makes log() of a negative at step 3. Rank 1 writes
    the report at its own line; rank 0, which only received the NaN through the all-reduce, says
    so in one line; both stop at step 3; torchrun exits 1."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = scripts / "report.json"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                             "-m", "nandoctor", "run", "--format", "json", "-o", str(out), "ddp_train.py"],
                            cwd=scripts, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "rank 0 of 2: stopped at step 3; the NaN/Inf was born on rank 1" in result.stderr
    doc = json.loads(out.read_text())              # written by rank 1 only
    assert doc["script"]["ranks"]["rank"] == 1 and doc["script"]["ranks"]["origin_ranks"] == [1]
    assert doc["causes"][0]["id"] == "unstable-op"
    assert doc["first_nonfinite"]["user_source"].startswith("ddp_train.py:")
    assert doc["first_nonfinite"]["module"] in ("model", "body")    # the script's own names (its variable for the root), not DDP's `module.`
    assert sorted(p.name for p in (scripts / doc["script"]["bundle"]).iterdir() if p.name.startswith("rank-")) == \
        ["rank-0", "rank-1"]
    # Its replay runs the script again, which needs the ranks: outside torchrun it says how.
    refused = nandoctor("replay", doc["script"]["bundle"], "--trust", cwd=scripts)
    assert refused.returncode == 2 and "torchrun --nproc-per-node 2 -m nandoctor replay" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_high_lr_is_confirmed_by_re_training_through_the_scripts_own_loop(scripts):
    """The guard keeps a CPU copy of the first step's state; asked whether a lower lr would have
    kept the run finite, it puts that copy back and lets the script's loop re-train past the
    failing step with the lr scaled. The fix proposes the lr that stayed finite."""
    result, doc = run_json(scripts, "sgd_lr_too_high.py", "--lr", "3")
    assert result.returncode == 1
    top = doc["causes"][0]
    assert top["id"] == "high-lr" and top["confirmed"] is True and top["file"] == "sgd_lr_too_high.py"
    tried = [e for e in doc["experiments"] if e["id"] == "lower-lr"]
    assert tried and all(e["change"]["from_step"] == 0 for e in tried)
    assert any(e["outcome"] == "finite" for e in tried)
    assert "--lr 3" in top["fix"]                        # the script's own flag is where the lr is set
    assert "stayed finite" in top["fix"]

    quick = nandoctor("run", "--no-experiments", "--format", "json", "sgd_lr_too_high.py", "--lr", "3", cwd=scripts)
    assert json.loads(quick.stdout)["experiments"] == []


def test_lr_experiment_cut_short_by_the_scripts_end_still_answers_past_the_divergence(scripts):
    """Regression (bench round 2, nanoGPT under torch.compile: NaN at iteration 21 of 30): the loop
    ends before a re-train from step 0 reaches the failing step. The watched run's loss had grown
    1e4x by step 2; a re-train still near its starting loss there answers the question."""
    result, doc = run_json(scripts, "sgd_lr_too_high.py", "--lr", "3", "--steps", "15")
    assert result.returncode == 1 and doc["first_nonfinite"]["step"] == 10
    tried = [e for e in doc["experiments"] if e["id"] == "lower-lr"]
    answered = [e for e in tried if e["outcome"] == "finite"]
    assert answered and "before the failing step" in answered[0]["note"], tried
    assert all(e["outcome"] in ("finite", "skipped") for e in tried)
    top = doc["causes"][0]
    assert top["id"] == "high-lr" and top["confirmed"] is True


def test_a_script_whose_loss_rejects_a_class_target_is_a_label_range_failure(scripts):
    """Regression (bench round 3, accelerate's gradient_accumulation.py on 1-based MRPC labels):
    cross_entropy's IndexError "Target 3 is out of bounds" was reported as a bare user-error."""
    result, doc = run_json(scripts, "one_based_labels.py")
    assert result.returncode == 1, result.stderr[-2000:]
    top = doc["causes"][0]
    assert top["id"] == "label-range", [c["id"] for c in doc["causes"]]
    assert top["file"].endswith("one_based_labels.py") and "y - 1" in top["fix"]
    assert "IndexError" in " ".join(top["evidence"])
    # It raised before the first optimizer.step(): the loop still has its SGD (bench round 5: the
    # reports of accelerate's gradient_accumulation.py and vae/main.py read "hand-written update").
    assert doc["runs"][0]["optimizer"]["name"] == "SGD" and doc["runs"][0]["optimizer"]["lr"] == 0.1
    assert doc["loop"]["hand_written_update"] is False and doc["loop"]["optimizer_built"]


def test_a_bundle_written_after_the_failing_optimizer_step_replays_without_running_the_script(scripts):
    """Regression (bench round 2, run_clm.py --adam_epsilon 0): the bundle of a NaN born in
    optimizer.step() holds the weights after that step. `replay --trust` ran the script with
    those NaN weights and blamed the embedding's forward (unexplained-nonfinite); without
    --trust it refused. Its state and the optimizer's settings are the evidence: nothing to run."""
    result, doc = run_json(scripts, "adam_eps0.py", "--eps", "0")
    assert result.returncode == 1 and doc["causes"][0]["id"] == "optimizer-eps"
    out = scripts / "replay.json"        # no --trust: nothing of the user's is run (--trust takes the same path)
    replayed = nandoctor("replay", doc["script"]["bundle"], "--format", "json", "-o", str(out), cwd=scripts)
    assert replayed.returncode == 1, replayed.stderr[-2000:]
    again = json.loads(out.read_text())
    jsonschema.validate(again, SCHEMA)
    assert again["causes"][0]["id"] == "optimizer-eps", [c["id"] for c in again["causes"]]
    assert again["first_nonfinite"]["phase"] == "optimizer"
    assert "final loss" not in replayed.stdout          # the script did not run


def test_a_run_that_ends_non_finite_never_passes_even_when_no_watch_attached(scripts):
    result, doc = run_json(scripts, "no_module.py")
    assert result.returncode == 1 and doc["verdict"] == "fail"
    assert doc["runs"][0]["status"] == "nonfinite"
    assert "ended non-finite" in doc["first_nonfinite"]["detail"]


def test_data_that_entered_the_model_non_finite_is_placed_at_the_call_not_shown_as_library_code(scripts):
    """Regression (bench round 5: time_sequence_prediction's `input.split(1, dim=1)`, Lightning's
    and Fabric's `x.view(...)`): the console read "inside library code at train.py:25", a line of
    the user's own model; the NaN entered the step at the model call."""
    out = scripts / "report.json"
    result = nandoctor("run", "--format", "json", "-o", str(out), "nan_input_split.py", cwd=scripts)
    doc = json.loads(out.read_text())
    event = doc["first_nonfinite"]
    assert result.returncode == 1 and doc["causes"][0]["id"] == "data-nonfinite"
    assert event["source"] == event["user_source"] == "nan_input_split.py:27", event
    assert "first used by aten.split.Tensor at nan_input_split.py:16" in event["detail"]
    assert "nan_input_split.py:27" in result.stderr and "inside library code" not in result.stderr  # the console
    assert "scalar argument" not in result.stderr        # split's size and dim did not make the NaN
