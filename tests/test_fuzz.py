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
    content = bytearray(victim.read_bytes())
    how = data.draw(st.sampled_from(["flip", "truncate", "payload"]), label="mutation")
    if how == "flip" and content:
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            offset = data.draw(st.integers(0, len(content) - 1), label="offset")
            content[offset] ^= data.draw(st.integers(1, 255), label="mask")
    elif how == "truncate":
        content = content[: data.draw(st.integers(0, max(0, len(content) - 1)), label="length")]
    else:
        content = bytearray(pickle.dumps(Payload(marker)))
    victim.write_bytes(bytes(content))
    paths = _files(target)
    before = [digest(p) for p in paths]
    command = data.draw(st.sampled_from(["postmortem", "postmortem-json"]), label="command")
    result = run_cli("postmortem", target, *(["-f", "json"] if command == "postmortem-json" else ["-q"]))
    check(result, paths, before, marker)
