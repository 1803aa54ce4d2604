"""Lower-lr experiments that run the script again from its start, in a child process.

A large model's step-0 rewind file costs every healthy run the kernel's allocation of that much
fresh page cache (0.6 s of system time for GPT-2 small's 324 MB, whatever the writer), for a
state read only after a failure. Over `experiments.restart_over_mib`, `nandoctor run` writes no
step-0 file; it keeps what the script started from instead: every random generator's state just
before the script's first line (a few KiB), its working directory, environment, `sys.path` and
arguments, and a fingerprint of the weights its first step started from (one float64 sum of a
strided sample per parameter, no copy).

When that run fails and the diagnosis asks whether a lower lr would have kept it finite, the
same interpreter runs the script again (`python -c BOOT SPEC`: restart_child.py), with those
generators restored, so that even an unseeded script builds the same initial weights. The child's
guard takes its own copy of the state at step 0, checks the fingerprint, and lets the script's
loop re-train from there with each lr scale in turn (watcher/rewind.py's `LrRewind`, as in the
parent's own loop), to the failing step plus EXTRA_STEPS. Its results come back as JSON. The
experiments' time budget bounds the child: it is killed (with its process group) at the end.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..load.script import TrainingScript
from ..run import stats
from ..trace import ExperimentResult
from ..trace.plain import from_plain, to_plain
from .rewind import FILE_PREFIX, new_result, process_gone

# Parameters' samples for the fingerprint: enough elements that a different initialisation
# shows in every sum, few enough that a large model's fingerprint costs one small kernel per
# parameter (run once, at step 0, only on runs over the restart threshold).
FINGERPRINT_SAMPLE = 4096
# Same interpreter, same generators, same ops: the sums agree to the last bit on one machine.
# The tolerance only absorbs a summation order a different thread count could change.
FINGERPRINT_RTOL = 1e-6
_PREFIX = "nandoctor-restart-"


@dataclass
class StartState:
    """What the script started from, captured just before its first line (cheap: a few KiB)."""
    rng: dict[str, Any]
    cwd: str
    env: dict[str, str]
    sys_path: list[str]


def capture_start() -> StartState:
    from .bundle_writer import capture_rng
    return StartState(rng=capture_rng(), cwd=os.getcwd(), env=dict(os.environ), sys_path=list(sys.path))


def distributed_run() -> bool:
    """Under torchrun, or with a process group: a rank cannot run the script again by itself (its
    peers would not), and a child of a single-rank group would find the parent's store on its port."""
    if any(key in os.environ for key in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID")):
        return True
    world = os.environ.get("WORLD_SIZE")
    if world is not None and world.strip() not in ("", "1"):
        return True
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized()


def weights_fingerprint(model: torch.nn.Module) -> list[tuple[str, float]]:
    """(name, float64 sum of a strided sample) per parameter, in one transfer per device."""
    names, sums = [], []
    for name, p in model.named_parameters():
        names.append(name)
        sums.append(stats.strided_sample(p.detach(), FINGERPRINT_SAMPLE).sum(dtype=torch.float64))
    values = [0.0] * len(sums)
    by_device: dict[torch.device, list[int]] = {}
    for i, total in enumerate(sums):
        by_device.setdefault(total.device, []).append(i)
    for indices in by_device.values():
        for i, value in zip(indices, torch.stack([sums[i] for i in indices]).tolist()):
            values[i] = value
    return list(zip(names, values))


def fingerprint_difference(expected: list[tuple[str, float]], found: list[tuple[str, float]]) -> Optional[str]:
    """None when the two fingerprints agree; else which parameter differs, in words."""
    if [n for n, _ in expected] != [n for n, _ in found]:
        return f"the model's parameters differ ({len(found)} now, {len(expected)} in the watched run)"
    for (name, a), (_, b) in zip(expected, found):
        same = (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=FINGERPRINT_RTOL, abs_tol=1e-12)
        if not same:
            return f"`{name}` sums to {b:.6g} in its sample, {a:.6g} in the watched run"
    return None


@dataclass
class RestartPlan:
    """The experiments a child re-runs from the script's start: what the parent knew at its failure."""
    scales: list[float]
    until: int                     # the last step an experiment runs (failing step + EXTRA_STEPS)
    failing_step: int
    lr: Optional[float]
    precision: str
    watch_index: int               # which optimizer's watch (in the order the loop first stepped them)
    fingerprint: list[tuple[str, float]]
    history: list[dict[str, Any]] = field(default_factory=list)   # the watched run's {step, loss}
    cuda_seed: Optional[int] = None    # CUDA's initial seed, when CUDA started only after the first line
    deadline: float = 0.0          # time.time() at which the child stops starting experiments


def run_restart(plan: RestartPlan, script: TrainingScript, start: StartState, budget: float) -> list[ExperimentResult]:
    """Run the script again from its start in a child process and return its experiments (each
    scale of `plan` once); whatever the child did not answer comes back `skipped`, with why."""
    began = time.perf_counter()
    if torch.cuda.is_initialized():
        # The stopped script's weights stay (the report reads them); its cached blocks need not.
        torch.cuda.empty_cache()
    _remove_orphans()
    folder = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))
    child: Optional[subprocess.Popen] = None
    note = ""
    try:
        plan.deadline = time.time() + budget
        torch.save(start.rng, folder / "rng.pt")
        spec = {"plan": to_plain(plan), "path": str(script.path) if script.path is not None else None,
                "module": script.module, "args": list(script.args), "sys_path": start.sys_path,
                "rng": str(folder / "rng.pt"), "results": str(folder / "results.json"), "out": str(folder / "bundles")}
        (folder / "spec.json").write_text(json.dumps(spec))
        boot = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
                "from nandoctor.watcher.restart_child import main; main(sys.argv.pop(1))")
        root = str(Path(__file__).resolve().parents[2])
        with open(folder / "stderr.txt", "wb") as stderr_file:
            # Its own session: a timeout ends the script's DataLoader workers with it.
            child = subprocess.Popen([sys.executable, *subprocess._args_from_interpreter_flags(), "-c", boot, root,
                                      str(folder / "spec.json")], cwd=start.cwd, env=start.env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr_file,
                                     start_new_session=True)
            try:
                code = child.wait(timeout=max(1.0, budget))
                if code != 0:
                    note = f"the script run again from its start ended with exit status {code}{_tail(folder / 'stderr.txt')}"
            except subprocess.TimeoutExpired:
                note = "the experiments' time budget ran out"
    except OSError as err:
        note = f"the script could not be run again from its start ({err})"
    finally:
        if child is not None and child.poll() is None:
            _kill(child)
        results = _read_results(folder / "results.json")
        shutil.rmtree(folder, ignore_errors=True)
        if child is not None:
            _remove_child_files(child.pid)
    answered = {r.change.get("lr_scale") for r in results}
    for scale in plan.scales:
        if scale not in answered:
            result = new_result(scale, plan.lr, 0, plan.until, plan.precision, restarted=True)
            result.note = note or "the script run again from its start ended before this experiment"
            results.append(result)
    # The child's start (interpreter, imports, the script up to its first step) is the first
    # experiment's cost: the report's experiment time is what the failure path took.
    if results:
        results[0].seconds += max(0.0, time.perf_counter() - began - sum(r.seconds for r in results))
    return results


def _remove_orphans() -> None:
    """The folders of runs killed while their child ran (each folder names its process)."""
    for path in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*-*"):
        if process_gone(path.name[len(_PREFIX):].split("-", 1)[0]):
            shutil.rmtree(path, ignore_errors=True)


def _kill(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        child.kill()
    child.wait()


def _remove_child_files(pid: int) -> None:
    """The rewind file of a child killed before its exit handlers ran (named by its pid)."""
    for path in Path(tempfile.gettempdir()).glob(f"{FILE_PREFIX}{pid}-*.pt"):
        path.unlink(missing_ok=True)


def _tail(path: Path, chars: int = 300) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.strip()]
    return f" ({lines[-1][-chars:]})" if lines else ""


def _read_results(path: Path) -> list[ExperimentResult]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [from_plain(ExperimentResult, item) for item in data if isinstance(item, dict)]
