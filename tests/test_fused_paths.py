"""The replay says which execution path differed from the recorded run (issue 18 item 3).

A watch bundle records the paths its step took (SDPA backends, fast paths, the optimizer's
implementation, autocast, device, torch); the replay records its own and compares. A finite
replay on another path is not called nonreproducible with a determinism fix: the finding names
the path. The recorded paths here are doctored to ones this CPU machine cannot take.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import nandoctor
from conftest import json_of, run_cli
from nandoctor.load.bundle import read_bundle

COMPAT = Path(__file__).parent / "compat"


# Self-attention in a block, as models write it: the SDPA call's site is the block's path.
ATTENTION_BLOCK = '''
import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x):
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        return F.scaled_dot_product_attention(q, k, v)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Block()

    def forward(self, x):
        return self.attn(x).pow(2).mean()


def build_model():
    return Net()


def get_batch(step):
    return torch.randn(3, 5, 8)


def training_step(model, batch):
    return model(batch)
'''


def _watched_bundle(tmp_path: Path, model_file: str, nan_in_loss: bool) -> tuple[Path, str]:
    """A watch bundle of a compat model (or of ATTENTION_BLOCK: "attention_block.py"); `nan_in_loss`:
    healthy batches, and the loop multiplies the loss by NaN outside the model, so the replay of
    the model's own step stays finite."""
    import importlib.util
    path = COMPAT / model_file
    if model_file == "attention_block.py":
        path = tmp_path / model_file
        path.write_text(ATTENTION_BLOCK)
    spec = importlib.util.spec_from_file_location(f"fused_{Path(model_file).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    watch = nandoctor.watch(model, opt, out=tmp_path / "bundles", warn=False)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for step in range(4):
            batch = module.get_batch(0 if nan_in_loss else step)     # step 0's batch is healthy
            with watch.step(batch):
                loss = module.training_step(model, batch)
                if nan_in_loss and step == 2:
                    loss = loss * float("nan")
                watch.loss(loss).backward()
                opt.step()
                opt.zero_grad()
    assert caught.value.step == 2
    return caught.value.bundle, str(path)


def _sites(paths: list[dict]) -> dict[tuple[str, str], dict]:
    return {(p["kind"], p["site"]): p for p in paths}


def test_a_finite_replay_on_other_fused_paths_names_them_instead_of_a_determinism_fix(tmp_path):
    bundle, model = _watched_bundle(tmp_path, "attention_block.py", nan_in_loss=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    recorded = _sites(manifest["paths"]["sites"])
    assert manifest["paths"]["version"] == 1
    assert recorded[("device", "device")]["path"] == "cpu" and recorded[("autocast", "autocast")]["path"] == "off"
    assert recorded[("torch", "torch")]["path"] == torch.__version__
    assert recorded[("optimizer", "optimizer")]["path"] == "for-loop"          # Adam's default on CPU
    assert "math" in recorded[("sdpa", "*")]["path"].split("/")
    # The backend the call took on the watch's sampled step 0 (its early-warning sampler saw it).
    sampled = recorded[("sdpa", "attn")]

    # Paths agree: no difference, and the finding keeps its determinism fix.
    same = nandoctor.replay(bundle, model, experiments=False)
    paths = same.trace.runs[0].replay_paths
    assert paths is not None and paths.differences == []
    replayed = {(p.kind, p.site): p for p in paths.replayed}
    assert (replayed[("sdpa", "attn")].path, replayed[("sdpa", "attn")].device) == (sampled["path"], sampled["device"]) == ("flash", "cpu")
    assert (replayed[("optimizer", "optimizer")].path, replayed[("optimizer", "optimizer")].device) == ("for-loop", "cpu")
    assert same.causes[0].id == "nonreproducible" and "deterministic" in same.causes[0].fix

    # A backend torch has no CPU kernel for, recorded on this device: named, with how to test it here.
    sampled_site = dict(sampled)
    sampled.update(path="efficient")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (missing,) = nandoctor.replay(bundle, model, experiments=False).trace.runs[0].replay_paths.differences
    assert (missing.recorded, missing.replayed) == ("efficient on cpu", "flash on cpu")
    assert missing.why == "torch has no efficient attention kernel on CPU"
    assert "--device" not in missing.fix and "sdpa_kernel(SDPBackend.MATH)" in missing.fix
    sampled.update(sampled_site)

    # Recorded on CUDA with flash attention and a fused Adam: paths this machine cannot take.
    manifest["device"] = "cuda:0"
    manifest["paths"]["sites"] = [s for s in manifest["paths"]["sites"] if s["kind"] not in ("sdpa", "optimizer", "device")]
    manifest["paths"]["sites"] += [{"site": "device", "kind": "device", "path": "cuda"},
                                   {"site": "attn", "kind": "sdpa", "path": "flash", "device": "cuda"},
                                   {"site": "optimizer", "kind": "optimizer", "path": "fused", "device": "cuda",
                                    "why": "fused=True"}]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("replay", bundle, "--model", model, "--no-experiments", "--format", "json")
    doc = json_of(result)
    assert result.exit_code == 1
    differences = doc["runs"][0]["replay_paths"]["differences"]
    assert [(d["kind"], d["recorded"], d["replayed"]) for d in differences] == [
        ("sdpa", "flash on cuda", f"{_sites(doc['runs'][0]['replay_paths']['replayed'])[('sdpa', 'attn')]['path']} on cpu"),
        ("optimizer", "fused on cuda", "for-loop on cpu"),
        ("device", "cuda", "cpu")]
    cause = doc["causes"][0]
    assert cause["id"] == "nonreproducible"
    assert any("scaled_dot_product_attention at `attn`: recorded flash on cuda" in e for e in cause["evidence"])
    assert "sdpa_kernel" in cause["fix"] and "flash on cuda" in cause["fix"] and "deterministic" not in cause["fix"]

    console = run_cli("replay", bundle, "--model", model, "--no-experiments")
    assert "Paths the replay took differently" in console.stdout
    assert "fused on cuda" in console.stdout and "for-loop on cpu" in console.stdout


def test_the_multihead_attention_fast_path_is_recorded_and_observed_in_the_replay(tmp_path):
    bundle, model = _watched_bundle(tmp_path, "mha_teacher.py", nan_in_loss=True)
    recorded = _sites(read_bundle(bundle).manifest.paths["sites"])
    assert recorded[("fast-path", "teacher")]["path"] == "fast"        # eval, frozen: its settings allow it
    report = nandoctor.replay(bundle, model, experiments=False)
    paths = report.trace.runs[0].replay_paths
    replayed = {(p.kind, p.site): p for p in paths.replayed}
    assert replayed[("fast-path", "teacher")].path == "fast" and paths.differences == []
    assert report.causes[0].id == "nonreproducible"

    # A run recorded off the fast path (say, under autocast) replayed onto it: named as a difference.
    manifest = json.loads((bundle / "manifest.json").read_text())
    for site in manifest["paths"]["sites"]:
        if site["kind"] == "fast-path":
            site.update(path="slow", why="autocast is enabled")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    doc = json_of(run_cli("replay", bundle, "--model", model, "--no-experiments", "--format", "json"))
    (difference,) = doc["runs"][0]["replay_paths"]["differences"]
    assert (difference["kind"], difference["site"], difference["recorded"], difference["replayed"]) == \
        ("fast-path", "teacher", "slow on cpu", "fast on cpu")


def test_a_bundle_written_before_paths_existed_loads_and_compares_what_it_holds(tmp_path):
    bundle, model = _watched_bundle(tmp_path, "sdpa_model.py", nan_in_loss=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["paths"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert read_bundle(bundle).manifest.paths is None
    report = nandoctor.replay(bundle, model, experiments=False)
    paths = report.trace.runs[0].replay_paths
    assert "older nandoctor" in paths.note and paths.differences == []
    assert {p.kind for p in paths.recorded} == {"device", "torch", "autocast"}
    assert report.causes[0].id == "nonreproducible"


SCRIPT = '''
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x):
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        return F.scaled_dot_product_attention(q, k, v).pow(2).mean()


model = Attn()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x = torch.randn(3, 5, 8)
for step in range(4):
    loss = model(x)
    if step == 2:
        loss = loss * float("nan")    # the loop's own third iteration only: a replay's first is finite
    opt.zero_grad()
    loss.backward()
    opt.step()
'''


def test_a_script_bundle_recorded_on_cuda_replays_on_cpu_and_names_the_device_and_optimizer(tmp_path):
    (tmp_path / "attn_loop.py").write_text(SCRIPT)
    report = nandoctor.run_script(tmp_path / "attn_loop.py", out=tmp_path / "bundles", experiments=False)
    assert report.trace.runs[0].first_nonfinite.step == 2
    (bundle,) = (tmp_path / "bundles").glob("step-*")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert _sites(manifest["paths"]["sites"])[("optimizer", "optimizer")]["path"] == "for-loop"
    for site in manifest["paths"]["sites"]:
        if site["kind"] == "device":
            site["path"] = "cuda"
        elif site["kind"] in ("sdpa", "optimizer"):
            site["device"] = "cuda"
        if site["kind"] == "optimizer":
            site.update(path="fused", why="fused=True")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    replay = run_cli("replay", bundle, "--trust", "--format", "json", "--no-experiments", cwd=tmp_path)
    doc = json_of(replay)
    paths = doc["runs"][0]["replay_paths"]
    assert "not observed" in paths["note"]
    kinds = {d["kind"]: d for d in paths["differences"]}
    assert (kinds["optimizer"]["recorded"], kinds["optimizer"]["replayed"]) == ("fused on cuda", "for-loop on cpu")
    assert (kinds["device"]["recorded"], kinds["device"]["replayed"]) == ("cuda", "cpu")
    cause = doc["causes"][0]
    assert cause["id"] == "nonreproducible" and "cuda" in cause["fix"] and "deterministic" not in cause["fix"]


def test_a_replay_that_reproduces_the_nan_compares_settings_without_another_step(tmp_path):
    bundle, model = _watched_bundle(tmp_path, "sdpa_model.py", nan_in_loss=False)     # 1e20 sample at step 2
    manifest = json.loads((bundle / "manifest.json").read_text())
    for group in manifest["optimizer"]["param_groups"]:
        group["foreach"] = True                  # the recorded optimizer: foreach, replayed as it says
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    report = nandoctor.replay(bundle, model, experiments=False)
    run = report.trace.runs[0]
    assert run.first_nonfinite.reproduced is not False and "scaled_dot_product" in run.first_nonfinite.op
    paths = run.replay_paths
    assert "reproduced" in paths.note and {p.kind for p in paths.replayed} == {"device", "torch", "autocast", "optimizer"}
    (difference,) = paths.differences
    assert (difference.kind, difference.recorded, difference.replayed) == ("optimizer", "for-loop on cpu", "foreach on cpu")
