"""Compile-only NaNs (issue 18, item 2): a compiled run's failing step that stays finite in eager
is replayed down torch.compile's ladder, and `compile-numerics` names the first failing stage,
the op and the user's line, the setting that avoids it, and a standalone repro."""
from __future__ import annotations

import json

from nandoctor.diagnose import diagnose
from nandoctor.diagnose.verdict import scan_failed, verdict
from nandoctor.trace import (CompileCulprit, CompileReplay, CompileStage, NonfiniteEvent, RunTrace, SourceLocation,
                             StepRecord, Trace)


def _trace(replay: CompileReplay | None) -> Trace:
    event = NonfiniteEvent(precision="32-true", step=3, phase="backward", kind="nan", reproduced=False,
                           detail="step 3 stayed finite when replayed from the same state")
    run = RunTrace(precision="32-true", status="nonfinite", steps=[StepRecord(step=3, loss=1.0)], first_nonfinite=event,
                   compile_replay=replay)
    return Trace(model_file="m.py", config={"grad_clip": None, "loss_scale": "none", "thresholds": {}}, device="cpu",
                 torch_version="x", tool_version="x", runs=[run])


def test_a_compiler_stage_that_brings_the_nan_back_is_compile_numerics_not_nonreproducible():
    replay = CompileReplay(recorded={"backend": "inductor"}, stages=[
        CompileStage("eager", "eager", finite=True), CompileStage("aot_eager", "aot_eager", finite=True),
        CompileStage("aot_eager_decomp_partition", "aot_eager_decomp_partition", finite=True),
        CompileStage("inductor", "inductor", finite=False, where="loss"),
        CompileStage("inductor+emulate_precision_casts", "inductor", {"emulate_precision_casts": True}, finite=True)],
        first_failing="inductor", last_finite="aot_eager_decomp_partition",
        culprit=CompileCulprit(graph=0, node="softmax", op="torch.softmax",
                               location=SourceLocation("model.py", 12, "forward", "return x.softmax(-1)"),
                               found_by="graph prefix bisection"),
        avoid="torch._inductor.config.emulate_precision_casts = True", avoid_stage="inductor+emulate_precision_casts",
        repro="b-compile-repro.py")
    trace = _trace(replay)
    findings = diagnose(trace)
    ids = [f.id for f in findings]
    assert ids[0] == "compile-numerics" and "nonreproducible" not in ids and "unexplained-nonfinite" not in ids
    top = findings[0]
    assert top.severity == "error" and verdict(findings, scan_failed(trace)) == "fail"
    assert str(top.source) == "model.py:12" and "inductor" in top.title and "torch.softmax" in top.title
    assert "  inductor: non-finite (loss), 0.0 s" in top.evidence
    assert "emulate_precision_casts = True" in top.fix and "b-compile-repro.py" in top.fix
    # The trace round-trips through JSON with its ladder.
    back = Trace.from_dict(json.loads(json.dumps(trace.to_dict())))
    assert back.runs[0].compile_replay == replay


def test_a_ladder_that_stays_finite_leaves_nonreproducible():
    replay = CompileReplay(stages=[CompileStage(name, name, finite=True) for name in ("eager", "aot_eager", "inductor")])
    ids = [f.id for f in diagnose(_trace(replay))]
    assert "nonreproducible" in ids and "compile-numerics" not in ids


# ---- through a real watch, a real bundle and `nandoctor replay` ---------------------------------------

import runpy
import textwrap
from pathlib import Path

import pytest
import torch

import nandoctor
from conftest import json_of, run_cli

import compile_nan_backend

MODEL_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(8, 16)
            self.fc2 = nn.Linear(16, 1)

        def forward(self, x):
            h = torch.tanh(self.fc1(x))
            h = h * 2.0                                  # the op the test backend makes NaN
            return self.fc2(h)


    def build_model():
        torch.manual_seed(0)
        return Net()


    def training_step(model, batch):
        x, y = batch
        return ((model(x) - y) ** 2).mean()
''')
MUL_LINE = next(i for i, line in enumerate(MODEL_SOURCE.splitlines(), 1) if "h * 2.0" in line)
FAST_LADDER = "compile_ladder:\n  stages: [eager, aot_eager]\nexperiments:\n  enabled: false\n"


def _load(path: Path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"compiled_user_model_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _watched_compiled_run(tmp_path: Path, compile_model) -> Path:
    """The user's loop: a model compiled in place (`model.compile(...)`), watched; it fires at step 0."""
    (tmp_path / "model.py").write_text(MODEL_SOURCE)
    user = _load(tmp_path / "model.py")
    net = user.build_model()
    compile_model(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    watch = nandoctor.watch(net, optimizer, out=tmp_path / "bundles")
    torch.manual_seed(1)
    with pytest.raises(nandoctor.NonFiniteError) as fired:
        for _ in range(3):
            batch = (torch.randn(4, 8), torch.randn(4, 1))
            with watch.step(batch):
                user.training_step(net, batch).backward()
            optimizer.step()
            optimizer.zero_grad()
    torch._dynamo.reset()
    return Path(fired.value.bundle)


def test_a_backend_that_corrupts_one_op_is_named_with_the_op_the_line_the_setting_and_a_runnable_repro(tmp_path, capsys):
    bundle = _watched_compiled_run(tmp_path, lambda net: net.compile(backend=compile_nan_backend.NAME))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["compile"] == {"backend": compile_nan_backend.NAME, "mode": None, "options": {}, "module": ""}
    (tmp_path / "nandoctor.yaml").write_text(FAST_LADDER)
    result = run_cli("replay", bundle, "--model", tmp_path / "model.py", "--config", tmp_path / "nandoctor.yaml",
                     "--format", "json")
    assert result.exit_code == 1, result.output
    doc = json_of(result)
    cause = doc["causes"][0]
    assert cause["id"] == "compile-numerics" and "nonreproducible" not in [c["id"] for c in doc["causes"]]
    assert (Path(cause["file"]).name, cause["line"]) == ("model.py", MUL_LINE)
    ladder = doc["runs"][0]["compile_replay"]
    assert [(s["name"], s["finite"]) for s in ladder["stages"]] == [
        ("eager", True), ("aot_eager", True), (f"recorded: {compile_nan_backend.NAME}", False)]
    assert ladder["first_failing"] == f"recorded: {compile_nan_backend.NAME}" and ladder["last_finite"] == "aot_eager"
    assert ladder["culprit"]["op"] == "operator.mul" and ladder["culprit"]["location"].endswith(f"model.py:{MUL_LINE}")
    assert ladder["avoid"] == 'torch.compile(model, backend="aot_eager")'
    assert doc["bundle"]["compile"]["backend"] == compile_nan_backend.NAME
    # The repro sits beside the bundle and reproduces the NaN wherever the backend is registered.
    repro = Path(ladder["repro"])
    assert repro == bundle.with_name(bundle.name + "-compile-repro.py") and Path(ladder["repro_inputs"]).is_file()
    # It imports torch only; run as a script here, where the backend is registered (a subprocess
    # would spend seconds importing torch again).
    script = repro.read_text()
    assert not [line for line in script.splitlines() if line.startswith(("import", "from")) and "nandoctor" in line]
    with pytest.raises(SystemExit) as ran:
        runpy.run_path(str(repro), run_name="__main__")
    printed = capsys.readouterr().out
    assert ran.value.code == 1 and "eager: finite" in printed and "non-finite output 0" in printed, printed


def test_a_nan_born_in_the_compiled_backward_is_located_op_by_op(tmp_path):
    bundle = _watched_compiled_run(tmp_path, lambda net: net.compile(backend=compile_nan_backend.NAME_BACKWARD))
    assert json.loads((bundle / "manifest.json").read_text())["check"] == "gradients"
    (tmp_path / "ladder.yaml").write_text("compile_ladder:\n  stages: [eager]\nexperiments:\n  enabled: false\n")
    report = nandoctor.replay(bundle, tmp_path / "model.py", config=tmp_path / "ladder.yaml")
    ladder = report.trace.runs[0].compile_replay
    assert [(s.name, s.finite) for s in ladder.stages] == [
        ("eager", True), (f"recorded: {compile_nan_backend.NAME_BACKWARD}", False)]
    assert ladder.stages[1].where.startswith("gradients")
    culprit = ladder.culprit
    assert (culprit.phase, culprit.op, culprit.found_by) == ("backward", "operator.mul", "single-op backward")
    assert (Path(culprit.location.file).name, culprit.location.line) == ("model.py", MUL_LINE)
    assert report.causes[0].id == "compile-numerics"
    assert "alone, whose compiled backward goes non-finite" in Path(ladder.repro).read_text()


def test_a_failing_inductor_stage_is_followed_by_its_numerics_flags_and_the_flag_that_helps_is_the_fix(tmp_path, monkeypatch):
    """Inductor itself is replaced by a fast stand-in that miscompiles `mul` unless
    torch._inductor.config.emulate_precision_casts is set, as a precision bug of a fused kernel
    would: the ladder must end at inductor, try each flag alone, and advise the one that helps."""
    import torch._inductor.compile_fx as compile_fx_module
    from torch._dynamo.backends.registry import lookup_backend
    import torch._inductor.config as inductor_config

    def miscompiling_inductor(gm, example_inputs, config_patches=None, **kwargs):
        with inductor_config.patch(config_patches or {}):
            exact = inductor_config.emulate_precision_casts
        return lookup_backend("aot_eager" if exact else compile_nan_backend.NAME)(gm, example_inputs)

    monkeypatch.setattr(compile_fx_module, "compile_fx", miscompiling_inductor)
    bundle = _watched_compiled_run(tmp_path, lambda net: net.compile(options={"max_autotune": False}))
    assert json.loads((bundle / "manifest.json").read_text())["compile"]["backend"] == "inductor"
    (tmp_path / "ladder.yaml").write_text("compile_ladder:\n  stages: [aot_eager, inductor]\n  bisect: false\n"
                                          "experiments:\n  enabled: false\n")
    report = nandoctor.replay(bundle, tmp_path / "model.py", config=tmp_path / "ladder.yaml")
    ladder = report.trace.runs[0].compile_replay
    assert [(s.name, s.finite) for s in ladder.stages] == [
        ("aot_eager", True), ("inductor", False), ("inductor+emulate_precision_casts", True)]
    assert ladder.stages[1].config == {"max_autotune": False}            # the run's own options
    assert ladder.avoid == "torch._inductor.config.emulate_precision_casts = True"
    top = report.causes[0]
    assert top.id == "compile-numerics" and "from the inductor stage on" in top.title
    assert top.fix.startswith("set `torch._inductor.config.emulate_precision_casts = True`")
    assert (Path(top.source.file).name, top.source.line) == ("model.py", MUL_LINE)
    script = Path(ladder.repro).read_text()
    assert "BACKEND = 'inductor'" in script and "INDUCTOR_CONFIG = {'max_autotune': False}" in script


def test_the_watch_reads_how_the_model_was_compiled_without_compiling_it():
    from nandoctor.watcher.compile_settings import compile_settings
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert compile_settings(net) is None
    assert compile_settings(torch.compile(net, mode="max-autotune-no-cudagraphs"))["options"]["max_autotune"] is True
    assert compile_settings(torch.compile(net, backend="aot_eager")) == {
        "backend": "aot_eager", "mode": None, "options": {}, "module": ""}
    net[0] = torch.compile(net[0], options={"emulate_precision_casts": True})
    assert compile_settings(net) == {"backend": "inductor", "mode": None, "options": {"emulate_precision_casts": True},
                                     "module": "0"}


class _PoisonFirstMul:
    """A buggy Inductor post-grad pass, the mechanism of pattern-replacement bugs that made
    compiled models return NaN (pytorch/pytorch#105190, `sfdp_replacement_1`): it rewrites the
    first forward aten.mul into one that yields NaN. Only Inductor runs post-grad passes."""

    def __call__(self, graph):
        target = next((n for n in graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.mul.Tensor),
                      None)
        if target is None or any(n.op == "placeholder" and "tangents" in n.name for n in graph.nodes):
            return
        with graph.inserting_after(target):
            poisoned = graph.call_function(torch.ops.aten.mul.Tensor, (target, float("nan")))
        target.replace_all_uses_with(poisoned, delete_user_cb=lambda user: user is not poisoned)

    def uuid(self):
        return "nandoctor-test-poison-first-mul"


def test_a_real_inductor_culprit_is_named_by_its_kernel_and_by_the_compiler_bisector(tmp_path):
    import torch._inductor.config as inductor_config
    from torch._inductor.custom_graph_pass import CustomGraphPass
    from nandoctor.run.compile_ladder import CapturedGraph, _Stage, bisect_component, inductor_kernel
    bad_pass = type("PoisonFirstMul", (_PoisonFirstMul, CustomGraphPass), {})()
    gm = torch.fx.symbolic_trace(lambda x: torch.tanh(x) * 2.0)
    graph, stage = CapturedGraph(gm, [torch.randn(8)]), _Stage("inductor", "inductor")
    with inductor_config.patch(post_grad_custom_post_pass=bad_pass):
        kernel = inductor_kernel(stage, graph, tmp_path / "step-000001")
        component = bisect_component(stage, graph, "forward")
    saved = tmp_path / "step-000001-compile-repro-inductor-code.py"
    assert kernel.startswith("generated kernel cpp_fused_mul_tanh") and str(saved) in kernel
    assert kernel.split()[2] in saved.read_text()
    assert component.startswith("compiler bisector: inductor, post_grad_passes application #")
    assert component.endswith("(post_grad_custom_post_pass)")


def test_a_compiled_run_not_replayed_under_the_compiler_is_told_to_suspect_it():
    replay = CompileReplay(recorded={"backend": "inductor"}, note="the step was re-run by the script's own loop in "
                           "eager mode; not replayed under the compiler")
    finding = next(f for f in diagnose(_trace(replay)) if f.id == "nonreproducible")
    assert "the run was compiled (inductor); the step was re-run" in finding.evidence[1]
    assert "TORCHDYNAMO_DISABLE=1" in finding.fix


def test_a_culprit_node_is_named_by_the_module_path_the_user_wrote():
    from nandoctor.run.compile_ladder import module_path
    graphs = []

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            return torch.exp(self.lin(x))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block()])

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x * 2

    torch._dynamo.reset()
    torch.compile(Net(), backend=lambda gm, inputs: graphs.append(gm) or gm.forward)(torch.randn(2, 4))
    by_op = {str(n.target): n for n in graphs[0].graph.nodes if n.op == "call_function"}
    exps = [n for n in graphs[0].graph.nodes if n.op == "call_function" and "exp" in str(n.target)]
    assert module_path(exps[1]) == "blocks.1" and module_path(exps[0], "encoder") == "encoder.blocks.0"
    assert module_path(next(n for t, n in by_op.items() if "mul" in t)) == ""
    torch._dynamo.reset()


def test_nandoctor_run_of_a_compiled_script_records_how_it_was_compiled_and_suspects_the_compiler(tmp_path):
    (tmp_path / "model.py").write_text(MODEL_SOURCE)
    (tmp_path / "train.py").write_text(textwrap.dedent('''
        import torch
        import compile_nan_backend
        import model as user

        net = user.build_model()
        net.compile(backend=compile_nan_backend.NAME)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        for step in range(3):
            batch = (torch.randn(4, 8), torch.randn(4, 1))
            user.training_step(net, batch).backward()
            optimizer.step()
            optimizer.zero_grad()
    '''))
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        report = nandoctor.run_script(tmp_path / "train.py", out=tmp_path / "bundles", experiments=False)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("model", None)
        torch._dynamo.reset()
    run = report.trace.runs[0]
    assert run.compile_replay is not None and run.compile_replay.recorded["backend"] == compile_nan_backend.NAME
    assert run.compile_replay.stages == [] and "not replayed under the compiler" in run.compile_replay.note
    # When the loop's eager re-run stayed finite, the compiler is the first suspect.
    for finding in (f for f in report.causes if f.id == "nonreproducible"):
        assert "TORCHDYNAMO_DISABLE=1" in finding.fix
    assert report.to_dict()["runs"][0]["compile_replay"]["recorded"]["backend"] == compile_nan_backend.NAME
