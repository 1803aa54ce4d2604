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


# ---- user code that misbehaves ---------------------------------------------------------------

MODEL_TEMPLATE = """
import sys, time
import torch
from torch import nn

def build_model():
    {build}
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

def get_batch(step):
    {batch}
    x = torch.randn(16, 4)
    return x, (x[:, 0] > 0).long()
"""


def model_source(build: str = "pass", batch: str = "pass") -> str:
    return MODEL_TEMPLATE.format(build=build, batch=batch)


@pytest.mark.parametrize("build, batch, phase", [
    ("sys.exit(0)", "pass", "init"),
    ("pass", "sys.exit(0)", "data"),
    ("pass", "raise SystemExit('bye')", "data"),
    ("pass", "raise KeyboardInterrupt()", "data"),
])
def test_exits_and_interrupts_raised_by_user_code_are_findings(model_file, build, batch, phase):
    result = run_cli("scan", model_file(model_source(build, batch)), "--steps", "2", "-p", "32-true",
                     "--no-experiments", "-f", "json")
    assert_clean(result, 1)
    doc = json_of(result)
    assert doc["verdict"] == "fail"
    error = doc["runs"][0]["error"]
    assert error["phase"] == phase and error["exc_type"] in ("SystemExit", "KeyboardInterrupt")
    assert "user-error" in [c["id"] for c in doc["causes"]]


def test_sys_exit_in_a_scheduler_is_a_finding(model_file):
    source = model_source() + "\ndef build_scheduler(optimizer):\n    sys.exit(0)\n"
    result = run_cli("scan", model_file(source), "--steps", "2", "-p", "32-true", "--no-experiments", "-f", "json")
    assert_clean(result, 1)
    assert json_of(result)["runs"][0]["error"]["exc_type"] == "SystemExit"


def test_user_prints_do_not_corrupt_machine_output(model_file):
    path = model_file(model_source("print('building the model {not json')", "print('batch', step)"))
    for fmt in ("json", "sarif"):
        result = run_cli("scan", path, "--steps", "2", "-p", "32-true", "--no-experiments", "-f", fmt)
        assert_clean(result, 0)
        json.loads(result.stdout)
        assert "building the model" in result.stderr


def test_max_seconds_bounds_a_hanging_build_model(model_file):
    path = model_file(model_source("time.sleep(120)"))
    began = time.monotonic()
    result = run_cli("scan", path, "--steps", "2", "--max-seconds", "2", "-f", "json")
    assert time.monotonic() - began < 60
    assert result.exit_code in (0, 1) and "Traceback" not in result.stderr
    assert {r["status"] for r in json_of(result)["runs"]} == {"timeout"}


def test_ctrl_c_writes_the_partial_report_and_exits_130(tmp_path):
    model = tmp_path / "slow.py"
    started = tmp_path / "started"
    model.write_text(model_source(batch=f"(open({str(started)!r}, 'w').close() if step == 2 else None); "
                                        "time.sleep(0.2 if step < 2 else 60)"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "nandoctor", "scan", str(model), "--steps", "5", "-p", "32-true",
                             "-p", "16-true", "--no-experiments", "-f", "json"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:          # wait until the scan is inside step 2's sleep
        time.sleep(0.5)
        if proc.poll() is not None:
            break
        if started.exists():
            break
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    doc = json.loads(out)
    first = doc["runs"][0]
    assert first["status"] == "interrupted" and first["steps_run"] == 2
    assert doc["runs"][1]["status"] == "interrupted" and doc["runs"][1]["steps_run"] == 0
    assert any("interrupted" in note for note in doc["notes"])


def test_junit_is_valid_xml_when_a_message_carries_ansi_codes(model_file):
    import xml.etree.ElementTree as ET
    path = model_file(model_source(batch="raise ValueError('\\x1b[31mred\\x1b[0m \\x07bell')"))
    result = run_cli("scan", path, "--steps", "1", "-p", "32-true", "--no-experiments", "-f", "junit")
    assert_clean(result, 1)
    root = ET.fromstring(result.stdout)
    assert "red" in ET.tostring(root, encoding="unicode") and "\x1b" not in result.stdout


# ---- unusable input is exit 2, checked before the scan, printed verbatim -----------------------

def test_optimizer_settings_torch_rejects_are_bad_input(tmp_path, model_file):
    path = model_file(HEALTHY_SOURCE)
    for section in ("{name: adam, betas: [1.5, 0.9]}", "{name: sgd, nesterov: true}", "{name: sgd, momentum: -1}"):
        config = tmp_path / "c.yaml"
        config.write_text(f"optimizer: {section}\n")
        result = run_cli("scan", path, "-c", config, "--steps", "1", "-p", "32-true", "--no-experiments")
        assert_clean(result, 2)
        assert "optimizer" in result.stderr


def test_huge_seed_is_bad_input(model_file):
    result = run_cli("scan", model_file(HEALTHY_SOURCE), "--seed", str(10**20), "--steps", "1")
    assert_clean(result, 2)
    assert "seed" in result.stderr


@pytest.mark.parametrize("command", [("config",), ("scan", "model.py", "--steps", "1")])
def test_pyproject_tool_that_is_not_a_table_is_bad_input(tmp_path, model_file, command):
    model_file(HEALTHY_SOURCE)
    (tmp_path / "pyproject.toml").write_text('tool = "x"\n')
    result = run_cli(*command, cwd=tmp_path)
    assert_clean(result, 2)
    assert "[tool.nandoctor]" in result.stderr        # printed verbatim, not eaten as markup


@pytest.mark.parametrize("option", ["-o", "--html"])
def test_output_paths_are_checked_before_the_scan(tmp_path, model_file, option):
    marker = tmp_path / "built"
    path = model_file(model_source(f"open({str(marker)!r}, 'w').close()"))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run_cli("scan", path, option, blocker / "sub" / "report.out", "-f", "json", "--steps", "1")
    assert_clean(result, 2)
    assert not marker.exists(), "the scan ran before the output path was checked"
    assert "not a directory" in result.stderr


def test_markup_like_text_in_messages_prints_verbatim(tmp_path):
    folder = tmp_path / "a[" / "bold]x[red]"
    folder.mkdir(parents=True)
    result = run_cli("postmortem", folder / "missing.pt")
    assert_clean(result, 2)
    assert "a[/bold]x[red]/missing.pt" in result.stderr


def test_yaml_error_names_file_and_line_once(tmp_path, model_file):
    config = tmp_path / "bad.yaml"
    config.write_text("steps: 3\nprecisions: [fp32\nseed: 1\n")
    result = run_cli("scan", model_file(HEALTHY_SOURCE), "-c", config)
    assert_clean(result, 2)
    assert str(config) in result.stderr and "line" in result.stderr
    assert "<unicode string>" not in result.stderr and result.stderr.count("line ") == 1


def test_tiny_yaml_cannot_make_a_huge_message(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        lines.append(f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]")
    lines.append("precisions: *i")
    config = tmp_path / "laughs.yaml"
    config.write_text("\n".join(lines) + "\n")
    assert config.stat().st_size < 400
    result = run_cli("config", "-c", config)
    assert_clean(result, 2)
    assert len(result.stderr) < 3000


def test_config_with_empty_or_partial_optimizer_section(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("optimizer: {}\n")
    assert_clean(run_cli("config", "-c", config), 0)
    config.write_text("optimizer: {lr: 0.01}\n")
    result = run_cli("config", "-c", config, "-f", "json")
    assert_clean(result, 0)
    values = json.loads(result.stdout)["values"]["optimizer"]
    assert values == {"name": "adamw", "lr": 0.01, "weight_decay": 0.0}
    assert_clean(run_cli("config", "--format", "xml"), 2)


def test_scan_uses_a_partial_optimizer_section_over_the_defaults(tmp_path, model_file):
    config = tmp_path / "c.yaml"
    config.write_text("optimizer: {lr: 0.01}\n")
    result = run_cli("scan", model_file(HEALTHY_SOURCE), "-c", config, "--steps", "1", "-p", "32-true",
                     "--no-experiments", "-f", "json")
    assert_clean(result, 0)
    optimizer = json_of(result)["runs"][0]["optimizer"]
    assert optimizer["weight_decay"] == 0 and optimizer["lr"] == 0.01


def test_an_empty_parameter_and_a_failing_reset_parameters_are_handled(model_file):
    """An empty parameter (a pruned head) has no inf-norm identity, which torch refuses; the
    re-init experiment calls the user's reset_parameters, which is user code like any other."""
    path = model_file("""
    import torch
    from torch import nn

    class Broken(nn.Linear):
        def reset_parameters(self):
            if getattr(self, "ready", False):
                raise RuntimeError("reset_parameters is not supported here")
            super().reset_parameters()
            self.ready = True

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = Broken(4, 3)
            self.pruned = nn.Parameter(torch.zeros(0))

        def forward(self, x):
            return self.fc(x) + self.pruned.sum()

    def build_model():
        return Net()

    def get_batch(step):
        g = torch.Generator().manual_seed(step)
        return torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    """)
    doc = json_of(run_cli("scan", path, "--steps", "3", "-p", "fp32", "-p", "16-mixed", "--format", "json"))
    assert doc["verdict"] == "pass" and {r["status"] for r in doc["runs"]} == {"ok"}

    from nandoctor.run.session import Overrides, TrainingSession
    from nandoctor.run.user_code import UserCodeFailed
    from nandoctor.load.model_file import load_model_file
    from nandoctor.load.config import resolve_config
    from nandoctor.trace import Precision
    import torch
    cfg = dict(resolve_config(None, {}).values)
    with pytest.raises(UserCodeFailed) as failed:
        TrainingSession(load_model_file(path), cfg, Precision("32-true"), torch.device("cpu"), Overrides(reinit=True))
    assert failed.value.error.exc_type == "RuntimeError" and failed.value.error.user_source
