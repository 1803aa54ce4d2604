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
JOB_TIMEOUT_S = 180      # for all jobs together; on an idle 2-core machine they take ~25 s
LOG_LINE = next(i for i, line in enumerate(MODEL.read_text().splitlines(), 1) if "torch.log(" in line)

# job -> its runs, one after the other in the same two processes (see tests/distributed/train.py):
# the healthy run completes, the last run of each job stops it.
JOBS = {
    "ddp": (TRAIN, {"RUNS": "ddp:none:-1:-1:100;ddp:batch:1:3:8"}),
    "fsdp2": (TRAIN, {"RUNS": "fsdp2:dcp:1:-1:3;fsdp2:forward:0:4:8"}),
    # The framework callbacks: Lightning's strategy="ddp" (a NaN born in the `head` module's forward on
    # rank 0 at step 2), the Hugging Face Trainer's DDP (item 29, a NaN embedding, is in rank 1's
    # batch of step 3: Accelerate hands out batches of 4 in turn).
    "lightning": (SCRIPTS / "train_lightning.py", {"BAD": "forward:0:2", "STEPS": "6"}),
    "transformers": (SCRIPTS / "train_hf.py", {"BAD_INDEX": "29", "STEPS": "6"}),
    # Lightning's ModelParallelStrategy (FSDP2's fully_shard in configure_model): a NaN born in
    # `head` on rank 0 at step 2. And `nandoctor run` of a plain FSDP2 loop with no nandoctor in
    # it: x < -8 in rank 1's batch of step 2.
    "lightning_fsdp2": (SCRIPTS / "train_lightning.py", {"BAD": "forward:0:2", "STEPS": "5", "STRATEGY": "fsdp2"}),
    "run_fsdp2": (("-m", "nandoctor", "run", "--format", "json", "-o", "report.json", str(SCRIPTS / "plain_fsdp2.py")),
                  {}),
    # check_every=4: rank 1's NaN batch at step 3 reaches rank 0 through the weights before the
    # check at step 4; then rank 1 wedges after its backward: rank 0's flag exchange times out
    # after 5 s instead of hanging.
    "wedged": (TRAIN, {"RUNS": "ddp:batch:1:3:12:4;ddp:hang:1:2:8", "DIST_TIMEOUT": "5"}),
    # Issue 21: on_nonfinite="rollback" survives a NaN sample (21: rank 1's batch of step 2); then
    # on_spike="skip" with a loss spike on rank 1 alone; then the first run again under FSDP2.
    "rollback": (SCRIPTS / "train_rollback.py", {"BAD": "21"}),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher() -> list[str]:
    torchrun = shutil.which("torchrun")
    return [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]


class Job:
    def __init__(self, name: str, script: Path | tuple[str, ...], env: dict[str, str], out: Path):
        self.name, self.out = name, out
        out.mkdir(parents=True)
        port = _free_port()
        full_env = {**os.environ, **env, "OUT": str(out), "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
                    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        self.log = open(out.parent / f"{name}.log", "w+")
        self.began = time.monotonic()
        command = [str(script)] if isinstance(script, Path) else list(script)     # a script, or `-m module args`
        self.proc = subprocess.Popen([*_launcher(), "--nproc_per_node=2", f"--master_port={port}", *command],
                                     env=full_env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=out)
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

    def stopped(self, run: int | None = None) -> dict[int, dict]:
        out = self.out / f"run-{run}" if run is not None else self.out
        return {r: json.loads((out / f"stopped-rank-{r}.json").read_text())
                for r in (0, 1) if (out / f"stopped-rank-{r}.json").is_file()}

    def bundle(self, run: int | None = None) -> Path:
        out = self.out / f"run-{run}" if run is not None else self.out
        folders = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("step-")]
        assert len(folders) == 1, f"{self.name}: expected one bundle, found {folders}\n{self.output[-3000:]}"
        return folders[0]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Job]:
    root = tmp_path_factory.mktemp("torchrun")
    started = {name: Job(name, script, env, root / name) for name, (script, env) in JOBS.items()}
    deadline = time.monotonic() + JOB_TIMEOUT_S
    for job in started.values():
        job.wait(deadline)
    return started


def _top_manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _replay(bundle: Path, *extra: str, exit_code: int = 1, model: bool = True) -> dict:
    result = run_cli("replay", bundle, *(("--model", MODEL) if model else ()), "--no-experiments", "--format", "json",
                     *extra, cwd=SCRIPTS)
    assert result.exit_code == exit_code, result.output
    return json_of(result)


def _assert_stopped_together(job: Job, step: int, run: int | None = None) -> None:
    job.check_finished()
    assert job.returncode == 1, job.output[-3000:]
    stopped = job.stopped(run)
    assert sorted(stopped) == [0, 1], job.output[-3000:]
    assert {s["step"] for s in stopped.values()} == {step}
    assert abs(stopped[0]["time"] - stopped[1]["time"]) < 5.0
    # torchrun shows exit code 1 (the first rank's NonFiniteError; it may then stop a rank that is
    # already on its way out).
    assert "exitcode  : 1" in job.output, job.output[-3000:]
    assert "NonFiniteError" in job.output


def test_nan_in_rank1_batch_names_rank1_and_every_rank_stops(jobs: dict[str, Job]) -> None:
    job = jobs["ddp"]
    _assert_stopped_together(job, step=3, run=1)
    bundle = job.bundle(1)
    assert sorted(p.name for p in bundle.iterdir() if p.is_dir()) == ["rank-0", "rank-1"]
    dist = _top_manifest(bundle)["detail"]["distributed"]
    assert (dist["origin_ranks"], dist["contaminated_ranks"], dist["written"]) == ([1], [0], [0, 1])
    assert dist["flags"]["1"]["batch"] and not dist["flags"]["0"]["batch"]
    assert dist["local_check"] == "ddp-comm-hook"
    for message in (s["message"] for s in job.stopped(1).values()):
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
    # Without --rank the replay picks the origin rank; the people's report names it too.
    assert _replay(bundle)["bundle"]["distributed"]["rank"] == 1
    people = run_cli("replay", bundle, "--model", MODEL, "--no-experiments", "--rank", "1")
    assert "replayed rank 1 of 2 (ddp); NaN/Inf born on rank 1; rank 0 only contaminated" in people.output


def test_nan_born_in_a_module_forward_on_rank0_only_fsdp2(jobs: dict[str, Job]) -> None:
    job = jobs["fsdp2"]
    _assert_stopped_together(job, step=4, run=1)
    bundle = job.bundle(1)
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
    # The run still went non-finite, so the verdict stays fail (never pass); the top cause says why
    # this rank's replay is finite.
    contaminated = _replay(bundle, "--rank", "1", exit_code=1)
    assert contaminated["verdict"] == "fail" and contaminated["causes"][0]["id"] == "nonreproducible"
    assert contaminated["first_nonfinite"]["reproduced"] is False
    assert any("replay rank 0" in note for note in contaminated["notes"])


def test_lightning_ddp_callback_names_the_origin_rank_and_replays_it(jobs: dict[str, Job]) -> None:
    job = jobs["lightning"]
    _assert_stopped_together(job, step=2)
    dist = _top_manifest(job.bundle())["detail"]["distributed"]
    assert (dist["origin_ranks"], dist["contaminated_ranks"], dist["local_check"]) == ([0], [1], "ddp-comm-hook")
    doc = _replay(job.bundle(), "--trust", model=False)
    origin = doc["first_nonfinite"]
    assert doc["bundle"]["distributed"]["rank"] == 0
    assert (origin["step"], origin["phase"], origin["module"], origin["op"]) == (2, "forward", "net.head", "aten.log.default")
    assert origin["source"].endswith(f"model.py:{LOG_LINE}")


def test_transformers_ddp_callback_names_the_origin_rank_and_replays_it(jobs: dict[str, Job]) -> None:
    job = jobs["transformers"]
    _assert_stopped_together(job, step=3)
    dist = _top_manifest(job.bundle())["detail"]["distributed"]
    assert (dist["origin_ranks"], dist["contaminated_ranks"], dist["local_check"]) == ([1], [0], "ddp-comm-hook")
    doc = _replay(job.bundle(), model=False)
    origin = doc["first_nonfinite"]
    assert doc["bundle"]["distributed"]["rank"] == 1
    assert (origin["step"], origin["phase"]) == (3, "data") and "inputs_embeds" in origin["tensor"]


def test_lightning_fsdp2_callback_names_the_origin_rank_and_replays_it_from_both_shards(jobs: dict[str, Job]) -> None:
    job = jobs["lightning_fsdp2"]
    _assert_stopped_together(job, step=2)
    dist = _top_manifest(job.bundle())["detail"]["distributed"]
    assert (dist["kind"], dist["local_check"]) == ("fsdp2", "fsdp2-reduce-scatter")
    assert (dist["origin_ranks"], dist["contaminated_ranks"]) == ([0], [1])
    doc = _replay(job.bundle(), "--trust", model=False)
    origin = doc["first_nonfinite"]
    assert doc["bundle"]["distributed"]["rank"] == 0 and doc["bundle"]["distributed"]["consolidated_from"] == [0, 1]
    assert (origin["step"], origin["phase"], origin["module"], origin["op"]) == (2, "forward", "net.head", "aten.log.default")
    assert origin["source"].endswith(f"model.py:{LOG_LINE}")


def test_nandoctor_run_of_a_plain_fsdp2_loop_names_the_origin_rank_and_line(jobs: dict[str, Job]) -> None:
    job = jobs["run_fsdp2"]
    job.check_finished()
    assert job.returncode == 1, job.output[-3000:]
    assert "rank 0 of 2: stopped at step 2; the NaN/Inf was born on rank 1" in job.output
    doc = json.loads((job.out / "report.json").read_text())            # written by the origin rank only
    assert doc["script"]["ranks"]["rank"] == 1 and doc["script"]["ranks"]["origin_ranks"] == [1]
    origin = doc["first_nonfinite"]
    assert (origin["step"], origin["phase"], origin["module"], origin["op"]) == (2, "forward", "head", "aten.log.default")
    assert origin["user_source"].endswith(f"model.py:{LOG_LINE}") and doc["causes"][0]["id"] == "unstable-op"
    assert sorted(p.name for p in (job.out / doc["script"]["bundle"]).iterdir() if p.name.startswith("rank-")) == \
        ["rank-0", "rank-1"]


def test_postmortem_of_an_fsdp2_dcp_checkpoint_names_the_shard_and_rank(jobs: dict[str, Job]) -> None:
    job = jobs["fsdp2"]
    checkpoint = job.out / "run-0-checkpoint"
    assert (checkpoint / ".metadata").is_file(), job.output[-3000:]
    result = run_cli("postmortem", checkpoint, "--format", "json")
    assert result.exit_code == 1, result.output
    doc = json_of(result)
    bad = [t for t in doc["tensors"] if t["nan"]]
    assert [t["name"] for t in bad] == ["body.0.weight"]
    shard = bad[0]["shards"]
    assert [(s["rank"], s["offsets"], s["sizes"], s["nan"]) for s in shard] == [(1, [8, 0], [8, 4], 1)]
    evidence = " ".join(doc["causes"][0]["evidence"])
    assert "rank 1's shard [8:16, 0:4]" in evidence


def test_healthy_two_rank_run_of_100_steps_writes_nothing(jobs: dict[str, Job]) -> None:
    job = jobs["ddp"]
    job.check_finished()
    assert "RUN 0 RANK 0 steps 100" in job.output and "RUN 0 RANK 1 steps 100" in job.output
    assert not (job.out / "run-0").exists()


def test_a_wedged_rank_ends_the_job_through_the_exchange_timeout(jobs: dict[str, Job]) -> None:
    job = jobs["wedged"]
    job.check_finished()
    assert job.returncode == 1
    assert "the per-step flag exchange with the other ranks failed or timed out after 5s" in job.output
    assert not (job.out / "run-1").exists()


def test_check_every_still_names_the_rank_that_flagged_first(jobs: dict[str, Job]) -> None:
    job = jobs["wedged"]
    job.check_finished()
    assert sorted(job.stopped(0)) == [0, 1]
    dist = _top_manifest(job.bundle(0))["detail"]["distributed"]
    # By the check at step 4 rank 0's own loss is NaN too (the weights are): the earliest rank is the origin.
    assert dist["check_every"] == 4 and dist["flags"]["0"]["loss"]
    assert (dist["flags"]["1"]["first_step"], dist["flags"]["0"]["first_step"]) == (3, 4)
    assert (dist["origin_ranks"], dist["contaminated_ranks"]) == ([1], [0])


def test_rank_of_a_single_process_bundle_is_bad_input(tmp_path: Path) -> None:
    bundle = tmp_path / "step-000000"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"format": "nandoctor-crash-bundle", "bundle_version": 1,
                                                      "step": 0, "check": "loss", "what": "the loss is NaN"}))
    result = run_cli("replay", bundle, "--model", MODEL, "--rank", "1")
    assert result.exit_code == 2
    assert "single process" in result.output


def test_rollback_survives_a_bad_sample_and_every_rank_skips_the_same_steps(jobs: dict[str, Job]) -> None:
    job = jobs["rollback"]
    job.check_finished()
    assert job.returncode == 0, job.output[-3000:]
    ranks = [json.loads((job.out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["rolled_back"] == ranks[1]["rolled_back"] == [2]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == [2] and ranks[0]["steps"] == 8
    assert ranks[0]["checksum"] == ranks[1]["checksum"]          # the ranks stayed one model
    assert all(r["loss"] == r["loss"] and abs(r["loss"]) < 1e3 for r in ranks)
    [entry] = json.loads((job.out / "skip_list.json").read_text())["entries"]
    # Copies every 2 steps: the one from before step 0 is put back (step 2 failed before its copy).
    assert (entry["step"], entry["policy"], entry["window"]) == (2, "rollback", {"from_step": 0, "to_step": 2})
    assert entry["samples"] == [21] and entry["rank_samples"] == {"0": [], "1": [21]}
    # A loss spike on rank 1 alone, on_spike="skip": judged on the ranks' mean loss, skipped on both.
    spiked = [json.loads((job.out / f"spike-rank-{r}.json").read_text()) for r in (0, 1)]
    assert spiked[0]["skipped"] == spiked[1]["skipped"] == [12] and spiked[0]["checksum"] == spiked[1]["checksum"]
    [entry] = json.loads((job.out / "spike" / "skip_list.json").read_text())["entries"]
    assert (entry["step"], entry["policy"], entry["check"]) == (12, "skip", "spike") and "loss" in entry["reason"]
    # The same stream with the model sharded by FSDP2: each rank puts back its own shards and their
    # optimizer state, and the run ends where the DDP run ended (same steps, same full weights).
    sharded = [json.loads((job.out / "fsdp2" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert sharded[0]["rolled_back"] == sharded[1]["rolled_back"] == [2]
    assert sharded[0]["skipped"] == sharded[1]["skipped"] == [2] and sharded[0]["steps"] == 8
    assert sharded[0]["checksum"] == pytest.approx(ranks[0]["checksum"], rel=1e-5)
    assert [r["loss"] for r in sharded] == pytest.approx([r["loss"] for r in ranks], rel=1e-5)
    [entry] = json.loads((job.out / "fsdp2" / "skip_list.json").read_text())["entries"]
    assert (entry["step"], entry["policy"], entry["samples"]) == (2, "rollback", [21])
