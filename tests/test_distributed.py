"""`nandoctor.watch` under `torchrun --nproc_per_node=2` (gloo, CPU), DDP and FSDP2: the rank the
NaN was born on, every rank stopping on the same step with the same exit code, a crash-bundle
part per rank, `nandoctor replay --rank R`, and a healthy run that writes nothing.

Every job runs with a hard timeout in its own process group, killed whole when it runs over:
a distributed test fails, it never stalls. The jobs start together (one fixture) so the suite
pays the torchrun start-up cost (~10 s, mostly importing torch three times) once.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import json_of, run_cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "distributed"
TRAIN = SCRIPTS / "train.py"
MODEL = SCRIPTS / "model.py"
JOB_TIMEOUT_S = 90
LOG_LINE = next(i for i, line in enumerate(MODEL.read_text().splitlines(), 1) if "torch.log(" in line)

# name -> environment of the job (see tests/distributed/train.py)
JOBS = {
    "ddp_batch_rank1": {"MODE": "ddp", "BAD": "batch:1:3", "STEPS": "8"},
    "fsdp2_forward_rank0": {"MODE": "fsdp2", "BAD": "forward:0:4", "STEPS": "8"},
    "ddp_healthy_100": {"MODE": "ddp", "STEPS": "100"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher() -> list[str]:
    torchrun = shutil.which("torchrun")
    return [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]


class Job:
    def __init__(self, name: str, env: dict[str, str], out: Path):
        self.name, self.out = name, out
        out.mkdir(parents=True)
        port = _free_port()
        full_env = {**os.environ, **env, "OUT": str(out), "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
                    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        self.log = open(out.parent / f"{name}.log", "w+")
        self.began = time.monotonic()
        self.proc = subprocess.Popen([*_launcher(), "--nproc_per_node=2", f"--master_port={port}", str(TRAIN)],
                                     env=full_env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.returncode: int | None = None
        self.seconds = 0.0
        self.output = ""

    def wait(self, deadline: float) -> None:
        try:
            self.returncode = self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)      # torchrun and both ranks
            self.proc.wait()
            self.returncode = None
        self.seconds = time.monotonic() - self.began
        self.log.seek(0)
        self.output = self.log.read()
        self.log.close()

    def check_finished(self) -> None:
        assert self.returncode is not None, f"{self.name} ran past {JOB_TIMEOUT_S}s and was killed:\n{self.output[-3000:]}"

    def stopped(self) -> dict[int, dict]:
        return {r: json.loads((self.out / f"stopped-rank-{r}.json").read_text())
                for r in (0, 1) if (self.out / f"stopped-rank-{r}.json").is_file()}

    def bundle(self) -> Path:
        folders = [p for p in self.out.iterdir() if p.is_dir() and p.name.startswith("step-")]
        assert len(folders) == 1, f"{self.name}: expected one bundle, found {folders}\n{self.output[-3000:]}"
        return folders[0]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Job]:
    root = tmp_path_factory.mktemp("torchrun")
    started = {name: Job(name, env, root / name) for name, env in JOBS.items()}
    deadline = time.monotonic() + JOB_TIMEOUT_S
    for job in started.values():
        job.wait(deadline)
    return started


def _top_manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _replay(bundle: Path, *extra: str, exit_code: int = 1) -> dict:
    result = run_cli("replay", bundle, "--model", MODEL, "--no-experiments", "--format", "json", *extra)
    assert result.exit_code == exit_code, result.output
    return json_of(result)


def _assert_stopped_together(job: Job, step: int) -> None:
    job.check_finished()
    assert job.returncode == 1, job.output[-3000:]
    stopped = job.stopped()
    assert sorted(stopped) == [0, 1], job.output[-3000:]
    assert {s["step"] for s in stopped.values()} == {step}
    assert abs(stopped[0]["time"] - stopped[1]["time"]) < 5.0
    # torchrun shows exit code 1 (the first rank's NonFiniteError; it may then stop a rank that is
    # already on its way out).
    assert "exitcode  : 1" in job.output, job.output[-3000:]
    assert "NonFiniteError" in job.output


def test_nan_in_rank1_batch_names_rank1_and_every_rank_stops(jobs: dict[str, Job]) -> None:
    job = jobs["ddp_batch_rank1"]
    _assert_stopped_together(job, step=3)
    bundle = job.bundle()
    assert sorted(p.name for p in bundle.iterdir() if p.is_dir()) == ["rank-0", "rank-1"]
    dist = _top_manifest(bundle)["detail"]["distributed"]
    assert (dist["origin_ranks"], dist["contaminated_ranks"], dist["written"]) == ([1], [0], [0, 1])
    assert dist["flags"]["1"]["batch"] and not dist["flags"]["0"]["batch"]
    assert dist["local_check"] == "ddp-comm-hook"
    for message in (s["message"] for s in job.stopped().values()):
        assert "born on rank 1 (its batch" in message and "rank(s) 0 only contaminated" in message
    # The rank's own part names the parameters whose local gradients broke before the all-reduce.
    rank1 = json.loads((bundle / "rank-1" / "manifest.json").read_text())["detail"]["distributed"]
    rank0 = json.loads((bundle / "rank-0" / "manifest.json").read_text())["detail"]["distributed"]
    assert rank1["local_gradients"] and not rank0["local_gradients"]

    doc = _replay(bundle, "--rank", "1")
    origin = doc["first_nonfinite"]
    assert (origin["step"], origin["phase"], origin["reproduced"]) == (3, "data", True)
    assert origin["tensor"].startswith("inputs")
    assert doc["bundle"]["distributed"]["rank"] == 1 and doc["bundle"]["distributed"]["origin_ranks"] == [1]
    assert any("born on rank 1" in note for note in doc["notes"])
    # Without --rank the replay picks the origin rank.
    assert _replay(bundle)["bundle"]["distributed"]["rank"] == 1


def test_nan_born_in_a_module_forward_on_rank0_only_fsdp2(jobs: dict[str, Job]) -> None:
    job = jobs["fsdp2_forward_rank0"]
    _assert_stopped_together(job, step=4)
    bundle = job.bundle()
    dist = _top_manifest(bundle)["detail"]["distributed"]
    assert (dist["kind"], dist["local_check"]) == ("fsdp2", "fsdp2-reduce-scatter")
    assert (dist["origin_ranks"], dist["contaminated_ranks"]) == ([0], [1])
    assert dist["flags"]["0"]["loss"] and not dist["flags"]["0"]["batch"]
    shards = json.loads((bundle / "rank-1" / "manifest.json").read_text())["detail"]["shards"]["model"]
    assert shards["body.0.weight"]["global_shape"] == [16, 4] and shards["body.0.weight"]["offsets"] == [8, 0]
    # Without --rank: the origin rank, its weights consolidated from both ranks' shards.
    doc = _replay(bundle)
    origin = doc["first_nonfinite"]
    assert doc["bundle"]["distributed"]["rank"] == 0
    assert doc["bundle"]["distributed"]["consolidated_from"] == [0, 1]
    assert (origin["step"], origin["phase"], origin["module"], origin["op"], origin["reproduced"]) == \
        (4, "forward", "head", "aten.log.default", True)
    assert origin["source"].endswith(f"model.py:{LOG_LINE}")
    # Rank 1 was only contaminated: its own batch replays finite, and the report says which rank to replay.
    contaminated = _replay(bundle, "--rank", "1", exit_code=0)
    assert contaminated["verdict"] == "warn" and contaminated["causes"][0]["id"] == "nonreproducible"
    assert contaminated["first_nonfinite"]["reproduced"] is False
    assert any("replay rank 0" in note for note in contaminated["notes"])


def test_healthy_two_rank_run_of_100_steps_writes_nothing(jobs: dict[str, Job]) -> None:
    job = jobs["ddp_healthy_100"]
    job.check_finished()
    assert job.returncode == 0, job.output[-3000:]
    assert "RANK 0 steps 100" in job.output and "RANK 1 steps 100" in job.output
    assert list(job.out.iterdir()) == []


def test_every_job_finished_quickly(jobs: dict[str, Job]) -> None:
    slowest = max(jobs.values(), key=lambda j: j.seconds)
    assert slowest.seconds < 60, f"{slowest.name} took {slowest.seconds:.1f}s"


def test_rank_of_a_single_process_bundle_is_bad_input(tmp_path: Path) -> None:
    bundle = tmp_path / "step-000000"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"format": "nandoctor-crash-bundle", "bundle_version": 1,
                                                      "step": 0, "check": "loss", "what": "the loss is NaN"}))
    result = run_cli("replay", bundle, "--model", MODEL, "--rank", "1")
    assert result.exit_code == 2
    assert "single process" in result.output
