"""Hostile and broken inputs, user code that misbehaves: exit codes 0/1/2 only, plain messages,
nothing executed from a checkpoint, nothing modified (issue 10)."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import HEALTHY_SOURCE, ROOT, json_of, run_cli

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def digest(path: Path) -> str:
    if path.is_dir():
        return "".join(digest(p) for p in sorted(path.rglob("*")) if p.is_file())
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Payload:
    """Unpickling this creates `marker`: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def save_dcp(state: dict, folder: Path) -> None:
    import torch.distributed.checkpoint as dcp
    dcp.save(state, checkpoint_id=str(folder), no_dist=True)


def assert_clean(result, code: int) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


# ---- checkpoints: nothing runs, structure not fooled, corruption called corruption -------------

@pytest.mark.parametrize("command", ["postmortem", "scan"])
def test_payload_in_dcp_metadata_runs_nothing(tmp_path, model_file, command):
    folder = tmp_path / "dcp"
    save_dcp({"model": small_model().state_dict()}, folder)
    metadata = pickle.loads((folder / ".metadata").read_bytes())
    marker = tmp_path / "pwned"
    metadata.storage_meta = Payload(marker)        # a payload nested inside real metadata
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    before = digest(folder)
    if command == "postmortem":
        result = run_cli("postmortem", folder, "-f", "json")
    else:
        result = run_cli("scan", model_file(HEALTHY_SOURCE), "--checkpoint", folder, "--steps", "1", "-q")
    assert_clean(result, 2)
    assert not marker.exists()
    assert "--trust" in result.stderr and "posix.system" in result.stderr or "system" in result.stderr
    assert digest(folder) == before


def test_dcp_metadata_replaced_by_a_payload_runs_nothing(tmp_path):
    folder = tmp_path / "dcp"
    save_dcp({"model": small_model().state_dict()}, folder)
    marker = tmp_path / "pwned"
    (folder / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    assert_clean(run_cli("postmortem", folder), 2)
    assert not marker.exists()


def test_dcp_with_missing_data_file_is_bad_input(tmp_path):
    folder = tmp_path / "dcp"
    save_dcp({"model": small_model().state_dict()}, folder)
    for data in folder.glob("*.distcp"):
        data.unlink()
    result = run_cli("postmortem", folder)
    assert_clean(result, 2)
    assert "missing, truncated or corrupt" in result.stderr


def test_healthy_dcp_still_reads(tmp_path):
    folder = tmp_path / "dcp"
    save_dcp({"model": small_model().state_dict()}, folder)
    assert_clean(run_cli("postmortem", folder, "-f", "json"), 0)


def test_training_dict_with_tensor_step_is_not_a_bare_state_dict(tmp_path, model_file):
    model = small_model()
    sd = {k: torch.full_like(v, float("nan")) for k, v in model.state_dict().items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"model": sd, "step": torch.tensor(100)}, path)
    result = run_cli("postmortem", path, "-f", "json")
    assert_clean(result, 1)
    doc = json_of(result)
    assert doc["verdict"] == "fail" and doc["step"] == 100
    assert {t["name"] for t in doc["tensors"]} == set(sd)


def test_nan_step_counter_is_bad_input(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": small_model().state_dict(), "step": float("nan")}, path)
    result = run_cli("postmortem", path)
    assert_clean(result, 2)
    assert "'step' counter is nan" in result.stderr


def test_float8_tensors_are_read(tmp_path):
    path = tmp_path / "f8.pt"
    sd = small_model().state_dict()
    sd["0.weight"] = sd["0.weight"].to(torch.float8_e4m3fn)
    torch.save(sd, path)
    result = run_cli("postmortem", path, "-f", "json")
    assert_clean(result, 0)
    assert any(t["dtype"] == "float8_e4m3fn" for t in json_of(result)["tensors"])


def test_hf_index_that_is_a_list_is_bad_input(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("[1, 2]")
    result = run_cli("postmortem", tmp_path)
    assert_clean(result, 2)
    assert "not a valid shard index" in result.stderr


def test_json_output_with_tensor_valued_optimizer_and_scaler_state(tmp_path):
    model = small_model()
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(1e-3), betas=(torch.tensor(0.9), torch.tensor(0.999)))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    scaler = {"scale": torch.tensor(1024.0), "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": torch.tensor(3)}
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler, "step": 1}, path)
    result = run_cli("postmortem", path, "-f", "json")
    assert_clean(result, 0)
    assert json_of(result)["scaler"]["scale"] == 1024.0


def test_byte_mutated_checkpoints_never_exit_3(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"model": small_model().state_dict(), "step": 3}, path)
    data = path.read_bytes()
    for i, offset in enumerate(range(0, len(data), max(1, len(data) // 60))):
        mutated = bytearray(data)
        mutated[offset] ^= 0xFF
        target = tmp_path / f"m{i}.pt"
        target.write_bytes(bytes(mutated))
        result = run_cli("postmortem", target)
        assert result.exit_code in (0, 1, 2), (offset, result.stderr)
        assert "Traceback" not in result.stderr


def test_crc_failure_is_corruption_not_a_training_nan(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save(small_model().state_dict(), path)
    with zipfile.ZipFile(path) as archive:
        member = next(m for m in archive.infolist() if "/data/" in m.filename and m.file_size >= 16)
    data = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(data[member.header_offset + 26:member.header_offset + 28], "little"), \
        int.from_bytes(data[member.header_offset + 28:member.header_offset + 30], "little")
    start = member.header_offset + 30 + name_len + extra_len
    data[start:start + 4] = b"\xff\xff\xff\xff"      # a NaN's bytes, as disk corruption would leave them
    path.write_bytes(bytes(data))
    result = run_cli("postmortem", path, "-f", "json")
    assert_clean(result, 2)
    assert "corrupt" in result.stderr and "param-nonfinite" not in result.stdout


def test_deflate_rezipped_checkpoint_is_refused_clearly(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save(small_model().state_dict(), path)
    rezipped = tmp_path / "rezipped.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(rezipped, "w", zipfile.ZIP_DEFLATED) as dst:
        for member in src.infolist():
            dst.writestr(member.filename, src.read(member.filename))
    result = run_cli("postmortem", rezipped, "-f", "json")
    assert_clean(result, 2)
    assert "re-compressed" in result.stderr and "weight-blowup" not in result.stdout


def test_truncated_checkpoint_is_called_truncated(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save(small_model().state_dict(), path)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = run_cli("postmortem", cut)
    assert_clean(result, 2)
    assert "truncated" in result.stderr


def test_symlink_loop_is_not_called_missing(tmp_path):
    loop = tmp_path / "loop.pt"
    os.symlink(loop, loop)
    result = run_cli("postmortem", loop)
    assert_clean(result, 2)
    assert "loop" in result.stderr and "does not exist" not in result.stderr


def test_nan_checkpoint_weights_are_not_blamed_on_init(tmp_path, model_file):
    source = HEALTHY_SOURCE
    model_path = model_file(source)
    import importlib.util
    spec = importlib.util.spec_from_file_location("healthy_for_ckpt", model_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sd = module.build_model().state_dict()
    first = next(iter(sd))
    sd[first] = torch.full_like(sd[first], float("nan"))
    ckpt = tmp_path / "nan.pt"
    torch.save({"model": sd, "step": 7}, ckpt)
    result = run_cli("scan", model_path, "--checkpoint", ckpt, "--steps", "2", "-p", "32-true", "--no-experiments",
                     "-f", "json")
    assert_clean(result, 1)
    doc = json_of(result)
    event = doc["first_nonfinite"]
    assert event["phase"] == "init" and event["surfaced_in"] == "checkpoint"
    assert "bad-init" not in [c["id"] for c in doc["causes"]]
    assert doc["verdict"] == "fail"
