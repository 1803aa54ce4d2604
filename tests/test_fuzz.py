"""Fuzzed config files and checkpoints through the CLI (in-process, CliRunner).

Property: exit code in {0, 1, 2} (never 3), never a traceback, the input unchanged, and no code
from the input run (a pickle payload would create a marker file). Bounded to about a minute.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from conftest import run_cli

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FUZZ = settings(max_examples=int(os.environ.get("NANDOCTOR_FUZZ_EXAMPLES", "40")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def digest(path: Path) -> str:
    if path.is_dir():
        return "".join(p.name + digest(p) for p in sorted(path.rglob("*")) if p.is_file())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check(result, paths: list[Path], before: list[str], marker: Path) -> None:
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.stderr[-1500:])
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr[-1500:]
    assert [digest(p) for p in paths] == before
    assert not marker.exists()


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---- config loader ---------------------------------------------------------------------------

KEYS = ["steps", "precisions", "seed", "device", "optimizer", "grad_clip", "loss_scale", "init_scale", "fail_on",
        "max_seconds", "experiments", "thresholds", "unknown", "optimizer.lr"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["fp32", "16-mixed", "adamw", "sgd", "dynamic", "[/x]", "1e-3", "cuda:0"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.sampled_from(KEYS + ["name", "lr", "betas",
                                                                                             "momentum", "enabled"]),
                                                                     inner, max_size=4)), max_leaves=8)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=5)


@FUZZ
@given(doc=documents, raw=st.binary(max_size=60), mode=st.sampled_from(["yaml", "raw", "toml"]))
def test_fuzzed_config_files(tmp_path_factory, doc, raw, mode):
    folder = tmp_path_factory.mktemp("cfg")
    marker = folder / "pwned"
    if mode == "toml":
        path = folder / "pyproject.toml"
        body = "\n".join(f"{k.split('.')[0]} = {v!r}".replace("None", '"none"').replace("True", "true")
                         .replace("False", "false") for k, v in doc.items())
        path.write_bytes(b"[tool.nandoctor]\n" + body.encode("utf-8", "replace") + b"\n" + raw)
        args = ["config", "-f", "json"]
    else:
        path = folder / "c.yaml"
        text = yaml.safe_dump(doc) if mode == "yaml" else ""
        path.write_bytes(text.encode() + (raw if mode == "raw" else b"") + f"\n# !!python/object/apply:os.system ['touch {marker}']\n".encode())
        args = ["config", "-c", str(path), "-f", "json"]
    before = [digest(path)]
    result = run_cli(*args, cwd=folder)
    check(result, [path], before, marker)


# ---- checkpoint readers ------------------------------------------------------------------------

def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, Path]:
    from safetensors.torch import save_file
    import torch.distributed.checkpoint as dcp
    root = tmp_path_factory.mktemp("originals")
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    out = {}
    out["pt"] = root / "train.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": torch.tensor(3)}, out["pt"])
    out["ckpt"] = root / "last.ckpt"
    torch.save({"state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()], "global_step": 3,
                "epoch": 0, "pytorch-lightning_version": "2.6.6"}, out["ckpt"])
    out["safetensors"] = root / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out["safetensors"])
    out["hf"] = root / "hf"
    out["hf"].mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out["hf"] / "model.safetensors")
    (out["hf"] / "model.safetensors.index.json").write_text(
        '{"metadata": {}, "weight_map": {' + ", ".join(f'"{k}": "model.safetensors"' for k in model.state_dict()) + "}}")
    out["dcp"] = root / "dcp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(out["dcp"]), no_dist=True)
    return out


def damage(victim: Path, how: str, data, marker: Path) -> None:
    """Flip a few bytes, truncate, or replace the file by a pickle whose load creates `marker`."""
    content = bytearray(victim.read_bytes())
    if how == "flip" and content:
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            offset = data.draw(st.integers(0, len(content) - 1), label="offset")
            content[offset] ^= data.draw(st.integers(1, 255), label="mask")
    elif how == "truncate":
        content = content[: data.draw(st.integers(0, max(0, len(content) - 1)), label="length")]
    else:
        content = bytearray(pickle.dumps(Payload(marker)))
    victim.write_bytes(bytes(content))


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


@FUZZ
@given(kind=st.sampled_from(["pt", "ckpt", "safetensors", "hf", "dcp"]), data=st.data())
def test_fuzzed_checkpoints(tmp_path_factory, originals, kind, data):
    folder = tmp_path_factory.mktemp("ck")
    source = originals[kind]
    target = folder / source.name
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy(source, target)
    marker = folder / "pwned"
    victim = data.draw(st.sampled_from(_files(target)), label="file")
    damage(victim, data.draw(st.sampled_from(["flip", "truncate", "payload"]), label="mutation"), data, marker)
    paths = _files(target)
    before = [digest(p) for p in paths]
    command = data.draw(st.sampled_from(["postmortem", "postmortem-json"]), label="command")
    result = run_cli("postmortem", target, *(["-f", "json"] if command == "postmortem-json" else ["-q"]))
    check(result, paths, before, marker)


# ---- crash bundles ---------------------------------------------------------------------------

BUNDLE_MODEL = '''
import torch
from torch import nn


def build_model():
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def training_step(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)
'''


@pytest.fixture(scope="module")
def original_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """A real crash bundle (a NaN batch at step 2 of a watched loop) and its model file."""
    import importlib.util
    import nandoctor
    root = tmp_path_factory.mktemp("bundle")
    model_file = root / "model.py"
    model_file.write_text(BUNDLE_MODEL)
    spec = importlib.util.spec_from_file_location("fuzz_bundle_model", model_file)
    user = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(user)
    torch.manual_seed(0)
    net = user.build_model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    with pytest.raises(nandoctor.NonFiniteError) as caught, nandoctor.watch(net, opt, out=root / "bundles") as watch:
        for step in range(5):
            x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
            if step == 2:
                x[1, 1] = float("nan")
            with watch.step((x, y)):
                user.training_step(net, (x, y)).backward()
                opt.step()
                opt.zero_grad()
    return caught.value.bundle, model_file


manifest_values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=6), scalars, max_size=3))


@settings(FUZZ, max_examples=int(os.environ.get("NANDOCTOR_FUZZ_EXAMPLES", "15")))
@given(data=st.data())
def test_fuzzed_crash_bundles(tmp_path_factory, original_bundle, data):
    """Replay of a damaged bundle: a flipped or truncated safetensors/manifest, a pickle dropped in
    place of a file, or a manifest field set to any JSON value. Exit 1 or 2, never a traceback,
    the bundle unchanged, nothing from it executed."""
    import json
    source, model_file = original_bundle
    target = tmp_path_factory.mktemp("b") / source.name
    shutil.copytree(source, target)
    marker = target.parent / "pwned"
    how = data.draw(st.sampled_from(["flip", "truncate", "payload", "field"]), label="mutation")
    if how == "field":
        manifest = json.loads((target / "manifest.json").read_text())
        key = data.draw(st.sampled_from(sorted(manifest)), label="key")
        manifest[key] = data.draw(manifest_values, label="value")
        (target / "manifest.json").write_text(json.dumps(manifest))
    else:
        damage(data.draw(st.sampled_from(_files(target)), label="file"), how, data, marker)
    paths = _files(target)
    before = [digest(p) for p in paths]
    result = run_cli("replay", target, "--model", model_file, "--no-experiments", "-f", "json")
    check(result, paths, before, marker)
    assert result.exit_code != 0, "a damaged bundle of a NaN step never passes"
