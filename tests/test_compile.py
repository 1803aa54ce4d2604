"""torch.compile as a first-class setting: nandoctor's hooks never enter the user's compiled
graphs (counted with the compiler's own counters, with and without nandoctor), bundles carry
the names the user wrote, and a plain build_model() replays a bundle from a compiled model.

CompileCounter is dynamo's counting backend: it runs each captured graph as it is, so the
tests pay for tracing, not for code generation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

import nandoctor
from nandoctor.load.bundle import STATE_AFTER_STEP, read_bundle

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).parent / "scripts"


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh())
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.body(x))


def _fresh():
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    net = Net()
    return net, torch.optim.SGD(net.parameters(), lr=0.01), torch.randn(16, 4), torch.randn(16, 1)


def _compiler_counts(backend: CompileCounter) -> tuple[int, int, int]:
    """(graphs compiled, graph breaks, ops captured): a recompile is one more graph."""
    return backend.frame_count, sum(counters["graph_break"].values()), backend.op_count


def _compiled_model_loop(watched: bool, tmp_path: Path, steps: int = 6):
    net, opt, x, y = _fresh()
    backend = CompileCounter()
    model = torch.compile(net, backend=backend)
    watch = nandoctor.watch(model, opt, out=tmp_path, stats_every=2) if watched else None
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    if watch is not None:
        watch.close()
    return _compiler_counts(backend), watch


def test_watch_on_a_compiled_model_adds_no_graph_break_or_recompile(tmp_path):
    plain, _ = _compiled_model_loop(False, tmp_path)
    watched, watch = _compiled_model_loop(True, tmp_path)
    assert watched == plain == (1, 0, plain[2])
    assert watch.step_index == 6 and all(h["grad_norm"] > 0 for h in watch.history)
    # Per-layer gradient norms still come from the parameters, under the names the user wrote;
    # activations inside the compiled graph are not measured.
    stat = watch.layer_stats[-1]
    assert stat["modules"] == ["", "body", "body.0", "body.1", "head"]
    assert stat["grad_norm"][2] > 0 and stat["grad_norm"][4] > 0
    assert stat["act_max_abs"] == [None] * 5


def _compiled_step_loop(watched: bool, tmp_path: Path, steps: int = 6, lr_at: dict | None = None):
    net, opt, x, y = _fresh()
    backend = CompileCounter()
    watch = nandoctor.watch(net, opt, out=tmp_path, stats_every=2) if watched else None

    @torch.compile(backend=backend)
    def train_step(x, y):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        return loss

    for step in range(steps):
        batch = x * float("nan") if lr_at and step == lr_at.get("nan_batch") else x
        if watch is None:
            train_step(batch, y)
            continue
        with watch.step((batch, y)):
            watch.loss(train_step(batch, y))
    if watch is not None:
        watch.close()
    return _compiler_counts(backend), watch


def test_watch_on_a_compiled_whole_train_step_adds_no_graph_break_or_recompile(tmp_path):
    plain, _ = _compiled_step_loop(False, tmp_path)
    watched, watch = _compiled_step_loop(True, tmp_path)
    assert watched == plain
    # The step ran inside compiled code: the checks ran when watch.step() ended, once per step.
    assert watch.step_index == 6 and [h["step"] for h in watch.history] == list(range(6))
    assert all(h["loss"] > 0 and h["grad_norm"] > 0 for h in watch.history)


def test_a_nan_inside_a_compiled_train_step_is_caught_at_the_step_boundary(tmp_path):
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        _compiled_step_loop(True, tmp_path, lr_at={"nan_batch": 3})
    assert caught.value.step == 3 and caught.value.what.startswith("the batch holds NaN")
    bundle = read_bundle(caught.value.bundle)
    # Checked after the compiled step had already updated the weights.
    assert bundle.manifest.state == STATE_AFTER_STEP
    assert set(bundle.model_state()) == {"body.0.weight", "body.0.bias", "head.weight", "head.bias"}


def _script(*args: str, cwd: Path, module: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, *(["-m", "nandoctor", "run"] if module else []), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=180, env=env)


@pytest.mark.parametrize("how", ["", "--whole-step", "--in-place"],
                         ids=["compiled-model", "compiled-whole-step", "compiled-in-place"])
def test_nandoctor_run_of_a_script_that_compiles_adds_no_graph_or_break(tmp_path, how, capsys, monkeypatch):
    # --in-place: model.compile() puts the module's hooks inside the compiled call; the guard wraps
    # that call from outside (regression, issue 18: it never saw the model again, so a NaN was
    # "non-finite gradients" with no re-run).
    import runpy
    whole_step = how == "--whole-step"
    args = [str(SCRIPTS / "compiled_model.py"), *([how] if how else [])]
    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(sys, "argv", args)
    runpy.run_path(args[0], run_name="__main__")      # as `python SCRIPT` runs it (in this process: faster)
    plain = capsys.readouterr()
    guarded = _script(*args, cwd=tmp_path, module=True)
    assert guarded.returncode == 0, guarded.stderr[-2000:]
    counted = [line for line in plain.out.splitlines() if line.startswith("COMPILED")]
    # The whole step breaks where the user's code does (zero_grad, backward): nandoctor adds none.
    assert counted == ["COMPILED graphs=2 breaks=4" if whole_step else "COMPILED graphs=1 breaks=0"]
    assert [line for line in guarded.stdout.splitlines() if line.startswith("COMPILED")] == counted
    assert "nandoctor run PASS" in guarded.stderr
    assert "_orig_mod" not in guarded.stderr and "recompile" not in guarded.stderr.lower()
    if how == "--in-place":
        failing = _script("--format", "json", *args, "--nan-at", "3", cwd=tmp_path, module=True)
        doc = json.loads(failing.stdout)
        event = doc["first_nonfinite"]
        assert failing.returncode == 1, failing.stderr[-2000:]
        assert (event["step"], event["phase"], event["op"], event["reproduced"]) == (3, "forward", "aten.log.default", True)
        line = next(i for i, text in enumerate(Path(args[0]).read_text().splitlines(), 1) if "torch.log(h + shift)" in text)
        assert event["user_source"].endswith(f"compiled_model.py:{line}")


NET = '''
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh())
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.body(x)) * torch.log(x.mean(-1, keepdim=True))
'''

MODEL_FILE = NET.replace("{", "{{").replace("}", "}}") + '''

def build_model():
    return {build}


def training_step(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)
'''


@pytest.mark.parametrize("how", ["wrapper", "in_place"])
def test_a_bundle_from_a_compiled_model_replays_with_a_plain_or_a_compiled_build_model(tmp_path, how):
    # `in_place`: model.compile() compiles the module itself (no `_orig_mod` wrapper), in the run
    # and in the replay's build_model().
    from tests.conftest import run_cli
    torch._dynamo.reset()
    namespace: dict = {}
    exec(MODEL_FILE.format(build="Net()"), namespace)
    torch.manual_seed(0)
    net = namespace["Net"]()
    if how == "in_place":
        net.compile(backend="eager")
        model = net
    else:
        model = torch.compile(net, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.rand(8, 4), torch.randn(8, 1)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        with nandoctor.watch(model, opt, out=tmp_path / "bundles") as watch:
            for step in range(3):
                batch = (x - 3.0 if step == 2 else x, y)     # log of a negative mean: NaN at step 2
                with watch.step(batch):
                    opt.zero_grad()
                    loss = torch.nn.functional.mse_loss(model(batch[0]), batch[1])
                    loss.backward()
                    opt.step()
    bundle = read_bundle(caught.value.bundle)
    assert "_orig_mod" not in str(bundle.manifest.to_json())
    assert set(bundle.model_state()) == {"body.0.weight", "body.0.bias", "head.weight", "head.bias"}
    assert bundle.manifest.rebuild["model_class"].endswith(":Net")
    assert bundle.manifest.compile["backend"] == "eager"
    compiled_build = ("torch.compile(Net(), backend='eager')" if how == "wrapper"
                      else "(lambda net: (net.compile(backend='eager'), net)[1])(Net())")
    for build in ("Net()", compiled_build):
        path = tmp_path / f"model_{len(build)}.py"
        path.write_text(MODEL_FILE.format(build=build))
        result = run_cli("replay", caught.value.bundle, "--model", path, "--no-experiments", "--format", "json")
        assert result.exit_code == 1, result.output[-2000:]
        assert '"aten.log.default"' in result.output and "_orig_mod" not in result.output


SCAN_FILE = NET + '''

def build_model():
    return Net()


def get_batch(step):
    g = torch.Generator().manual_seed(step)
    x = torch.rand(8, 4, generator=g)
    return (x - 3.0 if step == 3 else x), torch.randn(8, 1, generator=g)


def loss_fn(outputs, targets):
    return torch.nn.functional.mse_loss(outputs, targets)
'''


def test_scan_with_compile_trains_the_compiled_model_and_replays_eagerly(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(SCAN_FILE)
    torch._dynamo.reset()
    counters.clear()
    report = nandoctor.scan(path, steps=5, precisions=["32-true"], experiments=False, compile="eager")
    doc = report.to_dict()
    assert doc["config"]["compile"] == "eager"
    # The recorded steps went through dynamo, and nandoctor's recorder hooks broke nothing.
    assert counters["stats"]["unique_graphs"] >= 1 and sum(counters["graph_break"].values()) == 0
    event = doc["first_nonfinite"]
    assert event["step"] == 3 and event["op"] == "aten.log.default"
    assert event["user_source"].endswith("model.py:12") and "_orig_mod" not in str(doc)
    assert report.exit_code == 1


def test_the_compile_key_and_flag_are_checked(tmp_path):
    from tests.conftest import run_cli
    config = tmp_path / "bad.yaml"
    config.write_text("compile: [inductor]\n")
    path = tmp_path / "model.py"
    path.write_text(SCAN_FILE)
    result = run_cli("scan", path, "--config", config, "--compile")
    assert result.exit_code == 2 and "compile" in result.output and "Traceback" not in result.output


def test_replay_trust_of_a_script_bundle_finds_the_model_the_script_compiled(tmp_path):
    """Regression (bench round 2, nanoGPT `--compile=True`): the bundle holds the user's parameter
    names, while the script calls torch.compile's wrapper, whose keys start with `_orig_mod.`;
    `replay --trust` said no module of the script had the bundle's weights (exit 2)."""
    script = tmp_path / "compiled_model.py"
    script.write_text((SCRIPTS / "compiled_model.py").read_text())
    ran = _script("--format", "json", "-o", "run.json", "--out", "bundles", str(script), "--nan-at", "3",
                  cwd=tmp_path, module=True)
    assert ran.returncode == 1, ran.stderr[-2000:]
    bundle = json.loads((tmp_path / "run.json").read_text())["script"]["bundle"]
    replayed = subprocess.run([sys.executable, "-m", "nandoctor", "replay", bundle, "--trust", "--format", "json",
                               "-o", "replay.json"], cwd=tmp_path, capture_output=True, text=True, timeout=180,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert replayed.returncode == 1, replayed.stderr[-2000:]
    doc = json.loads((tmp_path / "replay.json").read_text())
    event = doc["first_nonfinite"]
    assert event["step"] == 3 and event["user_source"].startswith("compiled_model.py:"), event
