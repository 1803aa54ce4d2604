"""`nandoctor run`'s lr experiments for a state over `experiments.restart_over_mib`: no step-0 rewind
file on the healthy path; on a failure, the script runs again from its start in a child process
(its random generators restored, its step-0 weights checked against a fingerprint) and re-trains
from step 0 with each lr, as the in-process experiments re-train from the step-0 file."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import nandoctor

SCRIPTS = Path(__file__).parent / "scripts"

HEALTHY = """
import glob, os, tempfile, torch
model = torch.nn.Linear(1024, 1024)                 # 4 MiB of weights
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(2):
    model(torch.randn(4, 1024)).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
# Step 0's rewind file, if one was written, lives until the process exits.
print("rewind files:", len(glob.glob(os.path.join(tempfile.gettempdir(), "nandoctor-rewind-*"))))
"""

# sgd_lr_too_high.py's failure with the seed line of the script in {seed}.
DIVERGING = """
import time
import torch
{seed}
X = torch.randn(256, 16)
y = X @ torch.randn(16, 1)
model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
opt = torch.optim.SGD(model.parameters(), lr=60.0)
for step in range(40):
    idx = torch.randint(0, 256, (32,))
    loss = torch.nn.functional.mse_loss(model(X[idx]), y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
"""


@pytest.fixture
def temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary folder of the run's own (this process's and the child's), to see what is left."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.chdir(tmp_path)
    return folder


def lower_lr(report: nandoctor.RunReport) -> dict[float, dict]:
    return {e["change"]["lr_scale"]: e for e in report.to_dict()["experiments"] if e["id"] == "lower-lr"}


def test_lr_experiments_re_run_from_the_scripts_start_agree_with_the_in_process_ones(tmp_path, temporary):
    shutil.copy(SCRIPTS / "sgd_lr_too_high.py", tmp_path / "train.py")
    in_process = lower_lr(nandoctor.run_script("train.py", ["--lr", "60"], out=tmp_path / "a"))
    restarted_report = nandoctor.run_script("train.py", ["--lr", "60"], out=tmp_path / "b", restart_over_mib=0)
    restarted = lower_lr(restarted_report)
    assert {s: e["outcome"] for s, e in restarted.items()} == {s: e["outcome"] for s, e in in_process.items()}
    # lr 60 -> 6 still diverges; lr 60 -> 0.6 stays finite, on both paths.
    assert restarted[0.1]["outcome"] == "nonfinite" and restarted[0.01]["outcome"] == "finite", restarted
    for result in restarted.values():
        assert result["change"]["from_step"] == 0 and "run again from its start" in result["label"]
    assert all("run again" not in e["label"] for e in in_process.values())
    top = restarted_report.causes[0]
    assert top.id == "high-lr" and top.confirmed is True and "6e-01" in top.fix
    assert list(temporary.glob("nandoctor-*")) == []          # no spec, results or rewind file left


@pytest.mark.parametrize("over_mib, files", [(2, "0"), (8, "1")])
def test_a_healthy_run_over_the_threshold_writes_no_step_0_rewind_file(tmp_path, temporary, capsys, over_mib, files):
    (tmp_path / "train.py").write_text(HEALTHY)
    report = nandoctor.run_script("train.py", restart_over_mib=over_mib)
    assert report.exit_code == 0
    assert f"rewind files: {files}" in capsys.readouterr().out
    assert list(temporary.glob("nandoctor-*")) == []


def test_an_unseeded_script_starts_again_from_the_same_weights_a_time_seeded_one_is_skipped(tmp_path, temporary):
    """The generators are restored as they were before the script's first line: torch's default
    seed differs per process, so an unseeded script only builds the same weights that way."""
    (tmp_path / "unseeded.py").write_text(DIVERGING.format(seed=""))
    (tmp_path / "timed.py").write_text(DIVERGING.format(seed="torch.manual_seed(time.time_ns() % 2**31)"))
    unseeded = lower_lr(nandoctor.run_script("unseeded.py", out=tmp_path / "a", restart_over_mib=0))
    assert unseeded and {e["outcome"] for e in unseeded.values()} <= {"finite", "nonfinite"}, unseeded
    assert unseeded[0.01]["outcome"] == "finite"
    timed = lower_lr(nandoctor.run_script("timed.py", out=tmp_path / "b", restart_over_mib=0))
    assert timed and all(e["outcome"] == "skipped" for e in timed.values()), timed
    note = next(iter(timed.values()))["note"]
    assert "initial weights differ when it runs again" in note and "`0.weight`" in note
    assert list(temporary.glob("nandoctor-*")) == []


# Fails at step 6; in the child that runs it again (another process than the test's), it stalls
# at step 1, after the child's own step-0 rewind file was written.
STALLING = DIVERGING.format(seed="torch.manual_seed(0)") + """
    if step == 1 and os.getpid() != int(os.environ["TEST_PID"]):
        open(f"reached-{os.getpid()}", "w").close()
        time.sleep(60)
"""


def test_the_experiments_budget_kills_the_child_and_leaves_no_file_behind(tmp_path, temporary, monkeypatch):
    (tmp_path / "train.py").write_text("import os\n" + STALLING)
    (tmp_path / "budget.yaml").write_text("experiments:\n  max_seconds: 6\n")
    monkeypatch.setenv("TEST_PID", str(os.getpid()))
    # The folder of a run killed while its child ran (its process is gone): the next child's run removes it.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (temporary / f"nandoctor-restart-{dead.pid}-abc").mkdir()
    report = nandoctor.run_script("train.py", out=tmp_path / "a", restart_over_mib=0, config=tmp_path / "budget.yaml")
    tried = lower_lr(report)
    assert tried and all(e["outcome"] == "skipped" and "time budget ran out" in e["note"] for e in tried.values())
    assert list(tmp_path.glob("reached-*")), "the child never reached its step 1"
    assert list(temporary.glob("nandoctor-*")) == []
