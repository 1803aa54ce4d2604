"""`nandoctor postmortem` on checkpoints of every supported format, and `scan --checkpoint`."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import jsonschema
import pytest
import torch
from torch import nn

from conftest import json_of, run_cli
from test_formats import SCHEMA


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def trained(model: nn.Module):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(16, 4)).pow(2).mean().backward()
        opt.step()
    return opt


def pm(path, *extra):
    result = run_cli("postmortem", path, "--format", "json", *extra)
    assert "Traceback" not in result.stderr
    return result


def causes_of(result) -> list[str]:
    return [c["id"] for c in json_of(result)["causes"]]


def test_healthy_training_dict_passes(tmp_path):
    model = small_model()
    opt = trained(model)
    path = tmp_path / "ok.pt"
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(), "step": 3,
                "epoch": 0, "scaler": torch.amp.GradScaler("cpu").state_dict()}, path)
    result = pm(path)
    assert result.exit_code == 0, result.stderr
    doc = json_of(result)
    jsonschema.validate(doc, SCHEMA)
    assert doc["verdict"] == "pass" and doc["step"] == 3 and doc["command"] == "postmortem"
    assert {t["name"] for t in doc["tensors"]} == set(model.state_dict())


def test_nan_parameter_is_named_worst_first(tmp_path):
    model = small_model()
    with torch.no_grad():
        model[2].weight[0, :3] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(model.state_dict(), path)            # a bare state_dict
    result = pm(path)
    assert result.exit_code == 1
    doc = json_of(result)
    assert doc["causes"][0]["id"] == "param-nonfinite" and doc["verdict"] == "fail"
    assert doc["tensors"][0]["name"] == "2.weight" and doc["tensors"][0]["nan"] == 3
    assert doc["modules"][0]["module"] == "2"


def test_poisoned_adam_state_with_finite_weights(tmp_path):
    model = small_model()
    opt = trained(model)
    opt.state[model[0].weight]["exp_avg_sq"][0, 0] = float("nan")
    path = tmp_path / "poisoned.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    result = pm(path)
    doc = json_of(result)
    assert result.exit_code == 1 and doc["causes"][0]["id"] == "poisoned-optimizer-state"
    assert "exp_avg_sq of parameter 0: 1 NaN" in doc["causes"][0]["evidence"][0]
    assert doc["optimizer_state"]["tensors"][0]["key"] == "exp_avg_sq"


def test_collapsed_scaler_and_huge_weights(tmp_path):
    model = small_model()
    with torch.no_grad():
        model[0].weight.mul_(1e6)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** -8)
    path = tmp_path / "collapsed.pt"
    torch.save({"state_dict": model.state_dict(), "grad_scaler": scaler.state_dict(), "global_step": 900}, path)
    doc = json_of(pm(path))
    ids = [c["id"] for c in doc["causes"]]
    assert ids[0] == "loss-scale-collapse" and "weight-blowup" in ids
    blowup = next(c for c in doc["causes"] if c["id"] == "weight-blowup")
    assert blowup["evidence"][0].startswith("0.weight: max |w|")
    assert doc["step"] == 900


def test_baseline_shows_where_divergence_started(tmp_path):
    model = small_model()
    torch.save(model.state_dict(), tmp_path / "early.pt")
    with torch.no_grad():
        model[2].bias.mul_(50)
    torch.save(model.state_dict(), tmp_path / "late.pt")
    doc = json_of(pm(tmp_path / "late.pt", "--baseline", tmp_path / "early.pt"))
    assert doc["baseline"]["changes"][0]["name"] == "2.bias"
    assert doc["baseline"]["changes"][0]["relative_change"] == pytest.approx(49.0)


def test_lightning_checkpoint(tmp_path):
    model = small_model()
    opt = trained(model)
    state = opt.state_dict()
    state["state"][1]["exp_avg"].fill_(float("inf"))
    path = tmp_path / "epoch=3.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "optimizer_states": [state],
                "global_step": 120, "epoch": 3, "pytorch-lightning_version": "2.4.0"}, path)
    doc = json_of(pm(path))
    assert doc["format"] == "lightning" and doc["step"] == 120 and doc["epoch"] == 3
    assert doc["causes"][0]["id"] == "poisoned-optimizer-state"


def test_safetensors_and_sharded_hugging_face_folder(tmp_path):
    from safetensors.torch import save_file
    model = small_model()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd["2.weight"] = sd["2.weight"].clone()
    sd["2.weight"][0, 0] = float("inf")
    save_file(sd, tmp_path / "model.safetensors")
    page = tmp_path / "postmortem.html"
    doc = json_of(pm(tmp_path / "model.safetensors", "--html", page))
    assert doc["format"] == "safetensors" and doc["tensors"][0]["name"] == "2.weight" and doc["tensors"][0]["inf"] == 1
    html = page.read_text(encoding="utf-8")        # postmortem --html: the same page as scan and replay
    assert "postmortem" in html and "2.weight" in html and doc["causes"][0]["id"] in html

    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({k: sd[k] for k in ("0.weight", "0.bias")}, folder / "model-00001-of-00002.safetensors")
    save_file({k: sd[k] for k in ("2.weight", "2.bias")}, folder / "model-00002-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "0.weight": "model-00001-of-00002.safetensors", "0.bias": "model-00001-of-00002.safetensors",
        "2.weight": "model-00002-of-00002.safetensors", "2.bias": "model-00002-of-00002.safetensors"}}))
    result = pm(folder)
    doc = json_of(result)
    assert doc["format"] == "huggingface" and len(doc["tensors"]) == 4 and result.exit_code == 1
    (folder / "model-00002-of-00002.safetensors").unlink()
    missing = pm(folder)
    assert missing.exit_code == 2 and "missing" in missing.stderr


def test_torch_distributed_checkpoint_folder(tmp_path):
    import torch.distributed.checkpoint as dcp
    model = small_model()
    opt = trained(model)
    sd = {"model": model.state_dict(), "optim": {"state": {"0.weight": {"exp_avg_sq": opt.state[model[0].weight]["exp_avg_sq"]}}}}
    sd["model"]["0.bias"] = sd["model"]["0.bias"].clone().fill_(float("nan"))
    dcp.save(sd, checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    doc = json_of(pm(tmp_path / "dcp"))
    assert doc["format"] == "torch.distributed.checkpoint"
    assert doc["tensors"][0]["name"] == "0.bias" and doc["tensors"][0]["nan"] == 8
    assert doc["causes"][0]["id"] == "param-nonfinite"


class Hostile:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('ND_PWNED', '/tmp/nd_pwned')}",))


def test_hostile_pickle_runs_nothing(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("ND_PWNED", str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"model": small_model().state_dict(), "payload": Hostile()}, path)
    result = pm(path)
    assert result.exit_code == 2 and "--trust" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"not a checkpoint at all", "not a readable torch checkpoint"),
])
def test_empty_and_wrong_format_files(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    result = pm(path)
    assert result.exit_code == 2 and message in result.stderr


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save(small_model().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = path.read_bytes()
    result = pm(path)
    assert result.exit_code == 2 and "truncated" in result.stderr
    assert path.read_bytes() == before


def test_missing_path():
    result = pm("no/such/checkpoint.pt")
    assert result.exit_code == 2 and "does not exist" in result.stderr


MODEL_FILE = """
import torch
from torch import nn

def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

def get_batch(step):
    x = torch.randn(16, 4)
    return x, x[:, :2]

def build_optimizer(params):
    return torch.optim.Adam(params, lr=1e-3)
"""


def test_scan_from_a_checkpoint_reproduces_the_crash(tmp_path, model_file):
    path = model_file(MODEL_FILE)
    model = small_model()
    opt = trained(model)
    opt.state[model[2].weight]["exp_avg"].fill_(float("nan"))      # the state of the crash
    ckpt = tmp_path / "crash.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 40}, ckpt)
    result = run_cli("scan", path, "--checkpoint", ckpt, "--steps", "3", "-p", "fp32", "--format", "json")
    doc = json_of(result)
    assert result.exit_code == 1
    event = doc["first_nonfinite"]
    assert event["step"] == 40 and event["phase"] == "optimizer" and event["parameter"] == "2.weight"
    assert doc["runs"][0]["start_step"] == 40


def test_scan_checkpoint_that_does_not_fit(tmp_path, model_file):
    path = model_file(MODEL_FILE)
    other = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    torch.save(other.state_dict(), tmp_path / "other.pt")
    result = run_cli("scan", path, "--checkpoint", tmp_path / "other.pt", "--steps", "1", "-p", "fp32")
    assert result.exit_code == 2
    assert "shape mismatches: 0.weight: checkpoint [16, 4] vs model [8, 4]" in result.stderr
