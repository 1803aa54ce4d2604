"""`nandoctor run`'s memory, as a user sees it (the whole process's peak RSS): what the guard keeps
grows with the number of parameters, not with their size. The rewind state of step 0 (the lr
experiments re-train from it) lives in a temporary file, deleted at exit, or, over
experiments.restart_over_mib (this model), nowhere: the script runs again from its start; the early warnings'
optimizer-step statistics and the statistics steps' update ratio read strided samples of the
weights and moments, not copies."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Two 4096x4096 layers: 33.6 M parameters, 128 MiB of float32 weights (AdamW's state: twice that).
# Three steps: step 0 is a rewind snapshot's (no file over 64 MiB), an early-warning sampled step and a statistics step.
SCRIPT = """
import torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4096, 4096), torch.nn.Linear(4096, 4096))
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.randn(8, 4096)
for step in range(3):
    loss = model(x).pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
print("final loss", loss.item())
"""
WEIGHTS_MIB = 2 * (4096 * 4096 + 4096) * 4 / 2**20


def peak_rss_mib(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    child = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, child.stderr.read().decode()[-2000:]
    assert b"final loss" in child.stdout.read()
    return usage.ru_maxrss / 1024


def test_run_keeps_no_copy_of_a_large_models_weights_in_memory(tmp_path):
    (tmp_path / "train.py").write_text(SCRIPT)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TMPDIR": str(temporary)}
    # A rewind file left by a run that was killed (its process is gone) and one of a live run.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = temporary / f"nandoctor-rewind-{dead.pid}-0-abc.pt"
    live = temporary / f"nandoctor-rewind-{os.getpid()}-0-def.pt"
    orphan.write_bytes(b"x")
    live.write_bytes(b"x")
    plain = peak_rss_mib([sys.executable, "train.py"], tmp_path, env)
    guarded = peak_rss_mib([sys.executable, "-m", "nandoctor", "run", "-q", "train.py"], tmp_path, env)
    # Before: +128 MiB for the in-memory rewind copy, +128-256 MiB for the early warnings' copy of
    # the weights, +128-256 MiB for the statistics step's (step 0 of --stats-every 50). What is
    # left is start-up (~20 MiB).
    assert guarded - plain < WEIGHTS_MIB / 2, (plain, guarded)
    # The run's own rewind file (if any) is gone with the process; the killed run's orphan went at
    # its first snapshot; the live process's file stays.
    assert list(temporary.glob("nandoctor-*")) == [live]


def test_what_exists_before_the_script_is_frozen_out_of_the_collector_while_it_runs(tmp_path: Path):
    """Full collections during the script walk the script's own objects, not torch's and
    nandoctor's (~65 ms each on the blocks model; 0.35 s of a 9 s plain run): those are frozen
    (gc.freeze) for the script's run and given back after it, also to an in-process caller. The
    script's own cyclic garbage is still collected."""
    import gc
    import nandoctor
    (tmp_path / "train.py").write_text(
        "import gc, sys, torch\n"
        "class Cycle:\n"
        "    def __init__(self): self.me = self\n"
        "frozen = gc.get_freeze_count()\n"
        "Cycle(); collected = gc.collect()\n"
        "model = torch.nn.Linear(4, 1); opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for _ in range(2):\n"
        "    model(torch.randn(8, 4)).pow(2).mean().backward(); opt.step(); opt.zero_grad()\n"
        "open(sys.argv[1], 'w').write(f'{frozen} {collected}')\n")
    before = gc.get_freeze_count()
    report = nandoctor.run_script(tmp_path / "train.py", [str(tmp_path / "seen.txt")], out=tmp_path / "bundles",
                                  experiments=False)
    frozen, collected = map(int, (tmp_path / "seen.txt").read_text().split())
    assert report.exit_code == 0
    assert frozen > 10_000 and collected >= 1
    assert gc.get_freeze_count() == before
