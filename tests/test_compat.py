"""The modern training stack (docs/guides/compatibility.md): each row of the compatibility matrix
that no other test file backs. Wrapped optimizers, torch.func transforms, autocast and GradScaler in
the user's own loop, fused attention paths, reentrant checkpointing, GANs, BatchNorm buffers."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import nandoctor
from nandoctor.load.bundle import read_bundle


def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def steps(model, opt, count, bad_at=None):
    for step in range(count):
        x = torch.randn(8, 4)
        if step == bad_at:
            x[3, 1] = float("nan")
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()


# ---- wrapped optimizers ------------------------------------------------------------------------

def test_accelerate_prepared_optimizer_is_watched_on_the_torch_one(tmp_path):
    # Regression (issue 18): AcceleratedOptimizer subclasses torch.optim.Optimizer without running
    # its __init__, so hooking it raised "no attribute '_optimizer_step_pre_hooks'".
    accelerate = pytest.importorskip("accelerate")
    model, opt = tiny()
    model, wrapped = accelerate.Accelerator(cpu=True).prepare(model, opt)
    assert type(wrapped).__name__ == "AcceleratedOptimizer"
    watch = nandoctor.watch(model, wrapped, out=tmp_path, warn=False)
    assert watch.optimizer is opt
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        steps(model, wrapped, 4, bad_at=2)
    assert caught.value.step == 2 and caught.value.bundle is not None


def test_lightning_and_deepspeed_style_chains_are_unwrapped(tmp_path):
    lightning = pytest.importorskip("lightning.pytorch.core.optimizer")
    model, opt = tiny()

    class EngineOptimizer(torch.optim.Optimizer):     # DeepSpeed-style: a torch subclass around `.optimizer`
        def __init__(self, optimizer):
            self.optimizer = optimizer

        @property
        def param_groups(self):
            return self.optimizer.param_groups

        def step(self, closure=None):
            return self.optimizer.step(closure)

    chain = lightning.LightningOptimizer(EngineOptimizer(opt))
    watch = nandoctor.watch(model, chain, out=tmp_path, warn=False)
    assert watch.optimizer is opt
    steps(model, opt, 3)
    assert watch.step_index == 3
    watch.close()
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        nandoctor.watch(model, object(), out=tmp_path)


# ---- torch.func transforms ---------------------------------------------------------------------

COMPAT = Path(__file__).parent / "compat"
ROOT = Path(__file__).resolve().parents[1]


def nandoctor_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "nandoctor", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def per_sample_step(model, opt, x, y):
    from torch.func import functional_call, grad, vmap

    def loss_fn(params, xi, yi):
        return ((functional_call(model, params, (xi.unsqueeze(0),)).squeeze() - yi) ** 2) * torch.sqrt(yi + 4.0)
    params = {k: v.detach() for k, v in model.named_parameters()}
    per_sample = vmap(grad(loss_fn), in_dims=(None, 0, 0))(params, x, y)
    for name, p in model.named_parameters():
        p.grad = per_sample[name].mean(0)
    opt.step()
    opt.zero_grad()


def test_watch_survives_vmap_per_sample_gradients_and_checks_what_they_leave(tmp_path):
    # Regression (issue 18): the watch's hooks ran _foreach_norm on batched tensors inside vmap
    # ("Batching rule not implemented for aten::_foreach_norm.Scalar") and crashed the loop at step 0.
    model, opt = tiny()
    watch = nandoctor.watch(model, opt, out=tmp_path, stats_every=1, warn=False)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for step in range(4):
            x, y = torch.randn(8, 4), torch.randn(8)
            if step == 2:
                y[1] = -6.0
            per_sample_step(model, opt, x, y)
    assert caught.value.step == 2 and caught.value.what.startswith("non-finite gradients")
    assert [h["step"] for h in watch.history] == [0, 1]


def test_scan_of_a_vmap_training_step_names_the_users_line():
    # Regression (issue 18): the recorder stacked rows made inside vmap after it returned
    # ("maybe_level.has_value() INTERNAL ASSERT FAILED", exit 3).
    report = nandoctor.scan(COMPAT / "vmap_model.py", steps=5, precisions=["32-true"], experiments=False)
    event = report.trace.runs[0].first_nonfinite
    assert event.step == 3 and event.op == "aten.sqrt.default"
    assert event.user_source.file.endswith("vmap_model.py") and "torch.sqrt" in event.user_source.code


def test_run_of_a_per_sample_gradient_script_stops_at_the_failing_step(tmp_path):
    shutil.copy(COMPAT / "per_sample_grads.py", tmp_path)
    result = nandoctor_cli("run", "--format", "json", "-o", "r.json", "per_sample_grads.py", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    run = doc["runs"][0]
    assert run["first_nonfinite"]["step"] == 2 and run["first_nonfinite"]["phase"] == "backward"


# ---- autocast and GradScaler in the user's own loop ---------------------------------------------

def autocast_loop(watch, model, opt, dtype, steps=4, bad_at=2, scaler=None):
    from tests.compat.autocast_model import training_step
    for step in range(steps):
        x, y = torch.randn(8, 4), torch.randn(8)
        if step == bad_at:
            x = x * 3e4                       # past float16's range in `a`; nothing for float32
        with watch.step((x, y)):
            with torch.autocast("cpu", dtype=dtype):
                loss = watch.loss(training_step(model, (x, y)))
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad()


def test_the_loops_own_autocast_is_the_bundles_precision_and_the_replay_reproduces(tmp_path):
    # Regression (issue 18): the watch could not see autocast: a bundle said 32-true, the replay
    # ran in float32, stayed finite and said `nonreproducible`.
    from tests.compat.autocast_model import build_model
    for dtype, name in ((torch.bfloat16, "bf16-mixed"), (torch.float16, "16-mixed")):
        model = build_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        watch = nandoctor.watch(model, opt, out=tmp_path / name, warn=False)
        bad_at = 2 if dtype == torch.float16 else None
        if bad_at is None:
            autocast_loop(watch, model, opt, dtype, steps=2, bad_at=None)
            assert watch.precision == name
            watch.close()
            continue
        with pytest.raises(nandoctor.NonFiniteError) as caught:
            autocast_loop(watch, model, opt, dtype)
        assert read_bundle(caught.value.bundle).manifest.precision == name
        report = nandoctor.replay(caught.value.bundle, COMPAT / "autocast_model.py", experiments=False)
        event = report.trace.runs[0].first_nonfinite
        assert report.trace.runs[0].precision == name and event.reproduced is not False
        assert event.module == "a"


def test_a_grad_scaler_calibrating_from_65536_is_not_stopped(tmp_path):
    # Regression (issue 18): any 5 skips in a row counted as collapse, so a scaler that needs 11
    # halvings (65536 -> 32) before its first update stopped a healthy run at step 4.
    model, opt = tiny()
    scaler = torch.amp.GradScaler("cpu")
    watch = nandoctor.watch(model, opt, scaler, out=tmp_path, warn=False)
    for step in range(14):
        with watch.step(None):
            loss = watch.loss(model(torch.randn(8, 4)).pow(2).mean())
            # |grad| ~ 1e3 * scale: past float16 until the scale is ~32
            with torch.autocast("cpu", dtype=torch.float16):
                scaled = scaler.scale(model(torch.randn(8, 4)).sum() * 1e3 + loss)
            scaled.backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    watch.close()
    assert watch.skipped_steps >= 8 and not watch.events and not watch.bundles
    # Below the floor it is a collapse even before any update.
    model, opt = tiny()
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    watch = nandoctor.watch(model, opt, scaler, out=tmp_path / "floor", warn=False)
    with pytest.raises(nandoctor.NonFiniteError, match="below the floor of 1"):
        for step in range(4):
            scaler.scale(model(torch.randn(8, 4)).sum() * float("inf")).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()


# ---- buffers --------------------------------------------------------------------------------------

def test_a_before_step_bundle_holds_batchnorm_buffers_from_before_the_failing_forward(tmp_path):
    # Regression (issue 18): the bundle was written after the failing forward had already folded
    # the NaN batch into running_mean / running_var.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = nandoctor.watch(model, opt, out=tmp_path, warn=False)
    before = {}
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for step in range(4):
            before = {k: v.clone() for k, v in model[1].state_dict().items()}
            x = torch.randn(8, 4)
            if step == 2:
                x[3, 1] = float("nan")
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    assert not torch.isfinite(model[1].running_mean).all()          # the live model took the NaN in
    saved = read_bundle(caught.value.bundle).model_state()
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(saved[f"1.{key}"], before[key]), key


# ---- activation checkpointing ------------------------------------------------------------------

@pytest.mark.parametrize("reentrant", [True, False])
def test_a_backward_nan_inside_activation_checkpointing_carries_module_and_line(tmp_path, reentrant):
    # Regression (issue 18): with use_reentrant=True the backward recomputes the forward, whose
    # graph was never tagged: the origin read "gradient of SqrtBackward0", no module, no line.
    source = (COMPAT / "checkpoint_model.py").read_text()
    model_file = tmp_path / "checkpoint_model.py"
    model_file.write_text(source.replace("REENTRANT = True", f"REENTRANT = {reentrant}"))
    report = nandoctor.scan(model_file, steps=3, precisions=["32-true"], experiments=False)
    event = report.trace.runs[0].first_nonfinite
    assert event.step == 2 and event.phase == "backward"
    assert event.module == "block" and event.forward_op == "sqrt"
    assert event.user_source.line == 15 and "torch.sqrt" in event.user_source.code


# ---- fused attention paths -----------------------------------------------------------------------

def test_multihead_attention_keeps_its_fast_path_in_the_traced_replay():
    # Regression (issue 18): the tracer's function mode made nn.MultiheadAttention leave its fused
    # fast path, whose NaN on a fully padded sample the slow path does not make: the traced
    # replay stayed finite and the report said `unexplained-nonfinite`, with no op.
    report = nandoctor.scan(COMPAT / "mha_teacher.py", steps=3, precisions=["32-true"], experiments=False)
    event = report.trace.runs[0].first_nonfinite
    assert event.step == 2 and event.op == "aten._native_multi_head_attention.default"
    assert event.module == "teacher" and event.replay_traced is True
    assert "self.teacher(" in event.user_source.code
    assert report.causes[0].id == "masked-inf"


def test_sdpa_runs_the_recorded_backend_and_names_it():
    # Backend selection happens below nandoctor's modes: the traced replay runs the same kernel.
    report = nandoctor.scan(COMPAT / "sdpa_model.py", steps=3, precisions=["32-true"], experiments=False)
    event = report.trace.runs[0].first_nonfinite
    assert event.step == 2 and "scaled_dot_product" in event.op and event.replay_traced is True
    assert "scaled_dot_product_attention" in event.user_source.code


# ---- GANs ----------------------------------------------------------------------------------------

def test_a_gan_discriminator_step_inside_training_step_is_traced_at_the_users_line():
    # Regression (issue 18): the backward run inside training_step was taken for forward ops of
    # `loss_d.backward()`, with no line; its float64 experiment failed on the step's own float32
    # noise ("mat1 and mat2 must have the same dtype").
    report = nandoctor.scan(COMPAT / "gan_model.py", steps=3, precisions=["32-true", "16-mixed"])
    runs = {r.precision: r for r in report.trace.runs}
    event = runs["32-true"].first_nonfinite
    assert event.step == 2 and event.phase == "backward" and event.module == "discriminator"
    assert event.forward_op == "sqrt" and event.user_source.line == 16 and event.call is None
    assert report.causes[0].id == "grad-singularity"
    outcomes = [e.outcome for e in report.trace.experiments if e.id == "step-fp64"]
    assert outcomes and "error" not in outcomes
    assert all(c.severity == "error" for c in report.causes)        # no 16-mixed warning beside it


# ---- parametrizations, DataLoader workers --------------------------------------------------------

def test_parametrized_layers_are_watched_bundled_and_replayed(tmp_path):
    from tests.compat.parametrized_model import build_model, get_batch, training_step
    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    watch = nandoctor.watch(model, opt, out=tmp_path, warn=False)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for step in range(4):
            batch = get_batch(step)
            with watch.step(batch):
                watch.loss(training_step(model, batch)).backward()
                opt.step()
                opt.zero_grad()
    assert caught.value.step == 2
    assert "inp.parametrizations.weight.original0" in read_bundle(caught.value.bundle).model_state()
    report = nandoctor.replay(caught.value.bundle, COMPAT / "parametrized_model.py", experiments=False)
    event = report.trace.runs[0].first_nonfinite
    assert event.op == "aten.log.default" and "torch.log" in event.user_source.code and event.reproduced is not False


def test_dataloader_workers_under_nandoctor_run_name_the_dataset_index(tmp_path):
    source = (ROOT / "tests" / "scripts" / "nan_targets.py").read_text()
    assert "batch_size=64)" in source
    (tmp_path / "nan_targets_workers.py").write_text(source.replace("batch_size=64)", "batch_size=64, num_workers=1)"))
    result = nandoctor_cli("run", "--format", "json", "-o", "r.json", "nan_targets_workers.py", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["causes"][0]["id"] == "data-nonfinite" and "dataset indices 200" in doc["first_nonfinite"]["detail"]
    # Its replay runs the script again, workers and all, up to the recorded step.
    from conftest import json_of, run_cli
    replay = run_cli("replay", tmp_path / doc["script"]["bundle"], "--trust", "--format", "json", "--no-experiments",
                     cwd=tmp_path)
    again = json_of(replay)
    assert replay.exit_code == 1 and again["causes"][0]["id"] == "data-nonfinite"
    assert (again["first_nonfinite"]["step"], again["first_nonfinite"]["phase"]) == (3, "data")
    assert "dataset indices 200" in again["first_nonfinite"]["detail"]


# ---- the matrix page ---------------------------------------------------------------------------

def test_every_test_the_compatibility_page_names_exists():
    import re
    page = (ROOT / "docs" / "guides" / "compatibility.md").read_text()
    named = re.findall(r"`(test_[a-z_]+\.py)::(test_\w+)(?:\[[^\]]*\])?`", page)
    assert len(named) >= 20
    for file, test in named:
        assert f"def {test}(" in (ROOT / "tests" / file).read_text(), f"{file}::{test}"


@pytest.mark.parametrize("model_file", ["checkpoint_model.py", "checkpoint_nonreentrant.py", "mha_teacher.py"])
def test_watch_bundles_of_checkpointed_and_fast_path_models_replay_to_the_origin(tmp_path, model_file):
    import importlib.util
    path = COMPAT / model_file
    if model_file == "checkpoint_nonreentrant.py":
        path = tmp_path / model_file
        path.write_text((COMPAT / "checkpoint_model.py").read_text().replace("REENTRANT = True", "REENTRANT = False"))
    spec = importlib.util.spec_from_file_location(model_file[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    watch = nandoctor.watch(model, opt, out=tmp_path, warn=False)
    step_of = getattr(module, "training_step", None)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for step in range(4):
            batch = module.get_batch(step)
            with watch.step(batch):
                loss = step_of(model, batch) if step_of else nn.functional.mse_loss(model(batch[0]), batch[1])
                watch.loss(loss).backward()
                opt.step()
                opt.zero_grad()
    assert caught.value.step == 2
    report = nandoctor.replay(caught.value.bundle, path, experiments=False)
    event = report.trace.runs[0].first_nonfinite
    expected = {"checkpoint_model.py": ("block", "torch.sqrt"), "checkpoint_nonreentrant.py": ("block", "torch.sqrt"),
                "mha_teacher.py": ("teacher", "self.teacher(")}
    assert (event.module, expected[model_file][1] in event.user_source.code) == (expected[model_file][0], True)


def test_run_of_a_script_with_its_own_autocast_runs_and_bundles_in_that_precision(tmp_path):
    shutil.copy(COMPAT / "autocast_script.py", tmp_path)
    result = nandoctor_cli("run", "--format", "json", "-o", "r.json", "autocast_script.py", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["runs"][0]["precision"] == "bf16-mixed"
    assert doc["first_nonfinite"]["op"] == "aten.log.default" and doc["first_nonfinite"]["step"] == 2
    bundle = next((tmp_path / "nandoctor-bundles").iterdir())
    assert read_bundle(bundle).manifest.precision == "bf16-mixed"


def test_a_watch_bundle_of_a_vmap_step_replays_to_the_line_inside_the_transform(tmp_path):
    from tests.compat.vmap_model import build_model, get_batch, training_step
    torch.manual_seed(0)
    model = build_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    watch = nandoctor.watch(model, opt, out=tmp_path, warn=False, stats_every=1)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for step in range(5):
            batch = get_batch(step)
            with watch.step(batch):
                watch.loss(training_step(model, batch)).backward()
                opt.step()
                opt.zero_grad()
    assert caught.value.step == 3
    report = nandoctor.replay(caught.value.bundle, COMPAT / "vmap_model.py", experiments=False)
    assert report.exit_code == 1
    event = report.trace.runs[0].first_nonfinite
    assert event.op == "aten.sqrt.default" and "torch.sqrt" in event.user_source.code


def test_a_grad_scaler_loops_bundle_replays_in_16_mixed_with_the_scalers_state(tmp_path):
    from tests.compat.parametrized_model import build_model, get_batch, training_step
    model = build_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    watch = nandoctor.watch(model, opt, scaler, out=tmp_path, warn=False)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for step in range(4):
            batch = get_batch(step)
            with watch.step(batch):
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = watch.loss(training_step(model, batch))
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                opt.zero_grad()
    manifest = read_bundle(caught.value.bundle).manifest
    assert caught.value.step == 2 and manifest.precision == "16-mixed" and 0 < manifest.scaler["scale"] <= 1024.0
    report = nandoctor.replay(caught.value.bundle, COMPAT / "parametrized_model.py", experiments=False)
    event = report.trace.runs[0].first_nonfinite
    assert report.trace.runs[0].precision == "16-mixed" and event.op == "aten.log.default"


# ---- the whole stack under `nandoctor run` and its replay ----------------------------------------

def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.mark.parametrize("site", ["checkpoint", "teacher"])
def test_run_of_a_script_on_the_modern_stack_names_the_origin_and_its_bundle_replays(tmp_path, site):
    # Accelerate, gradient accumulation, weight_norm, checkpointing (both kinds), SDPA and an MHA
    # fast-path teacher in one script. Regression (issue 18): under `nandoctor run` the recompute of
    # a non-reentrant checkpoint was logged as a new top-level call, and its extra ops failed
    # torch's check of the recomputed tensors (CheckpointError) at step 0.
    from conftest import json_of, run_cli
    script = COMPAT / "stack_script.py"
    shutil.copy(script, tmp_path)
    result = nandoctor_cli("run", "--format", "json", "-o", "r.json", "stack_script.py", site, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    event = doc["first_nonfinite"]
    if site == "checkpoint":
        expected = ("backward", "block", "sqrt", line_of(script, "torch.sqrt("), "grad-singularity")
    else:
        expected = ("forward", "teacher", None, line_of(script, "self.teacher(x, x, x"), "masked-inf")
    assert (event["step"], event["phase"], event["module"], event["forward_op"]) == (2, *expected[:3])
    assert event["user_source"] == f"stack_script.py:{expected[3]}" and doc["causes"][0]["id"] == expected[4]
    bundle = read_bundle(tmp_path / doc["script"]["bundle"])
    # Step 2 trained on loader batches 4 and 5, though Accelerate's loader had drawn batch 4 during
    # step 1 and batch 6 during step 2 (it fetches one ahead).
    indices = [i for entry in bundle.micro_batches() if "loader" in entry for i in entry["indices"]]
    assert indices == list(range(16, 24))
    if site == "teacher":
        return
    replay = run_cli("replay", tmp_path / doc["script"]["bundle"], "--trust", "--format", "json", "--no-experiments",
                     cwd=tmp_path)
    again = json_of(replay)
    assert replay.exit_code == 1
    assert {k: again["first_nonfinite"][k] for k in ("step", "module", "user_source")} == \
        {k: event[k] for k in ("step", "module", "user_source")}


# ---- the same stack in a LightningModule, under NanDoctorCallback ---------------------------------

@pytest.mark.parametrize("site", ["checkpoint", "teacher", "overflow"])
def test_lightning_callback_on_the_modern_stack_bundles_a_step_that_replays_to_the_origin(tmp_path, site):
    # One module: weight_norm, checkpointing (both kinds), SDPA, an MHA fast-path teacher, a
    # DataLoader with a worker process; `overflow` runs in 16-mixed with Lightning's GradScaler.
    L = pytest.importorskip("lightning")
    import warnings
    from lightning.pytorch.plugins.precision import MixedPrecision
    from nandoctor.integrations.lightning import NanDoctorCallback
    from tests.compat import lit_stack
    callback = NanDoctorCallback(out=tmp_path)
    plugins = [MixedPrecision("16-mixed", "cpu")] if site == "overflow" else []   # Lightning says bf16 on CPU
    trainer = L.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False, plugins=plugins,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                        default_root_dir=tmp_path)
    torch.manual_seed(0)
    with pytest.raises(nandoctor.NonFiniteError) as caught, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(lit_stack.StackRegressor(), lit_stack.get_loader(site, workers=1))
    assert caught.value.step == 2
    manifest = read_bundle(caught.value.bundle).manifest
    report = nandoctor.replay(caught.value.bundle, trust=True, experiments=False)
    event = report.trace.runs[0].first_nonfinite
    source = COMPAT / "lit_stack.py"
    expected = {"checkpoint": ("backward", "block", "sqrt", line_of(source, "torch.sqrt("), "grad-singularity"),
                "teacher": ("forward", "teacher", None, line_of(source, "self.teacher(x, x, x"), "masked-inf"),
                "overflow": ("forward", "inp", None, line_of(source, "h = self.inp(x)"), "fp16-overflow")}[site]
    assert (event.phase, event.module, event.forward_op, event.user_source.line) == expected[:4]
    assert expected[4] in [c.id for c in report.causes] and event.reproduced is True
    if site == "overflow":
        # The scaler skipped its first step while calibrating from 65536: not a stop; the bundle
        # and its replay are 16-mixed, from the scaler's state.
        assert manifest.precision == report.trace.runs[0].precision == "16-mixed"
        assert manifest.scaler["scale"] == 32768.0 and callback.watch.skipped_steps == 1


# ---- the watch: SDPA and a GAN fed by DataLoader workers ------------------------------------------

class StepBatches(torch.utils.data.Dataset):
    """Item i is a model file's get_batch(i): a DataLoader with workers serves a step per item."""

    def __init__(self, get_batch, count):
        self.get_batch, self.count = get_batch, count

    def __len__(self):
        return self.count

    def __getitem__(self, step):
        torch.manual_seed(step)
        return self.get_batch(step)


@pytest.mark.parametrize("model_file", ["gan_model.py", "sdpa_model.py"])
def test_watch_of_a_gan_and_of_sdpa_fed_by_dataloader_workers_replays_to_the_origin(tmp_path, model_file):
    import importlib.util
    spec = importlib.util.spec_from_file_location(model_file[:-3], COMPAT / model_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.build_model()
    opt = torch.optim.SGD(model.parameters() if model_file == "sdpa_model.py" else model.generator.parameters(), lr=0.01)
    watch = nandoctor.watch(model, opt, out=tmp_path, warn=False)
    loader = torch.utils.data.DataLoader(StepBatches(module.get_batch, 5), batch_size=None, num_workers=1)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for batch in loader:
            with watch.step(batch):
                watch.loss(module.training_step(model, batch)).backward()
                opt.step()
                opt.zero_grad()
    assert caught.value.step == 2
    report = nandoctor.replay(caught.value.bundle, COMPAT / model_file, experiments=False)
    event = report.trace.runs[0].first_nonfinite
    if model_file == "gan_model.py":
        # The discriminator's own backward and step inside training_step: the replay names its line.
        assert (event.phase, event.module, event.forward_op) == ("backward", "discriminator", "sqrt")
        assert event.user_source.line == line_of(COMPAT / model_file, "torch.sqrt(")
    else:
        assert "scaled_dot_product" in event.op and "scaled_dot_product_attention" in event.user_source.code
    assert event.reproduced is True


def _quiet_trainer(L, tmp_path, callback):
    """A 5-step CPU Trainer that writes and prints nothing of its own."""
    return L.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                     default_root_dir=tmp_path)


def test_lightning_gan_in_manual_optimization_is_bundled_before_its_discriminator_step_and_replayed(tmp_path):
    # Regression (issue 18): the discriminator's optimizer had already stepped NaN into its weights
    # when the generator's loss fired, so the bundle held them NaN and the replay blamed `init`;
    # and the replay called training_step outside a Trainer, where self.optimizers() raises.
    L = pytest.importorskip("lightning")
    import warnings
    from nandoctor.integrations.lightning import NanDoctorCallback
    from tests.compat import lit_gan
    callback = NanDoctorCallback(out=tmp_path)
    trainer = _quiet_trainer(L, tmp_path, callback)
    torch.manual_seed(0)
    with pytest.raises(nandoctor.NonFiniteError) as caught, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(lit_gan.LitGAN(), lit_gan.get_loader(bad=2))
    assert caught.value.step == 2
    saved = read_bundle(caught.value.bundle).model_state()
    assert all(torch.isfinite(v).all() for v in saved.values())
    report = nandoctor.replay(caught.value.bundle, trust=True, experiments=False)
    event = report.trace.runs[0].first_nonfinite
    assert (event.step, event.phase, event.module, event.forward_op) == (2, "backward", "discriminator", "sqrt")
    assert event.user_source.line == line_of(COMPAT / "lit_gan.py", "torch.sqrt(") and event.reproduced is True
    assert report.causes[0].id == "grad-singularity"


@pytest.mark.parametrize("script", ["lit_stack.py", "lit_gan.py"])
def test_run_of_a_lightning_fit_and_of_a_gan_loop_names_the_origin(tmp_path, script):
    # Lightning's own loop under `nandoctor run` (LightningOptimizer around the torch optimizer).
    # lit_stack.py: automatic optimization (the step in a closure) over the checkpointed stack.
    # Regressions (issue 18): the watch's batch check on a block called straight from
    # training_step added saved tensors to the non-reentrant checkpoint's forward
    # (CheckpointError); a closure's re-run traced training_step's own ops as data.
    # lit_gan.py: manual optimization, the discriminator's optimizer first. The re-run used to
    # begin at the discriminator's call for the generator's loss in the same iteration, or
    # inside the generator's empty closure, and stayed finite (`nonreproducible`).
    pytest.importorskip("lightning")
    shutil.copy(COMPAT / script, tmp_path)
    args = ("checkpoint",) if script == "lit_stack.py" else ()
    result = nandoctor_cli("run", "--format", "json", "-o", "r.json", script, *args, cwd=tmp_path, timeout=240)
    assert result.returncode == 1, result.stderr[-2000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    event = doc["first_nonfinite"]
    assert (event["step"], event["phase"], event["forward_op"], event["reproduced"]) == (2, "backward", "sqrt", True)
    assert event["user_source"] == f"{script}:{line_of(COMPAT / script, 'torch.sqrt(')}"
    assert doc["causes"][0]["id"] == "grad-singularity"
    if script == "lit_stack.py":
        assert event["module"] == "block"


@pytest.mark.parametrize("setting", ["vmap", "compile"])
def test_lightning_callback_with_torch_func_or_a_compiled_module_replays_to_the_users_line(tmp_path, setting):
    L = pytest.importorskip("lightning")
    import warnings
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters
    from nandoctor.integrations.lightning import NanDoctorCallback
    from tests.compat import lit_func
    callback = NanDoctorCallback(out=tmp_path)
    trainer = _quiet_trainer(L, tmp_path, callback)
    torch.manual_seed(0)
    backend = CompileCounter()
    counters.clear()
    module = lit_func.LitPerSample() if setting == "vmap" else torch.compile(lit_func.LitRegressor(), backend=backend)
    with pytest.raises(nandoctor.NonFiniteError) as caught, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, lit_func.get_loader())
    assert caught.value.step == 2
    if setting == "compile":
        assert backend.frame_count >= 1 and not counters["graph_break"]     # compiled, and nandoctor broke nothing
        assert not any(k.startswith("_orig_mod") for k in read_bundle(caught.value.bundle).model_state())
    report = nandoctor.replay(caught.value.bundle, trust=True, experiments=False)
    event = report.trace.runs[0].first_nonfinite
    assert (event.step, event.phase, event.op, event.reproduced) == (2, "forward", "aten.sqrt.default", True)
    site = "torch.sqrt(yi" if setting == "vmap" else "torch.sqrt(x"
    assert event.user_source.line == line_of(COMPAT / "lit_func.py", site)
    assert report.causes[0].id == "unstable-op"


def test_a_sampled_early_warning_step_keeps_multihead_attention_on_its_fast_path(tmp_path):
    # Regression (issue 18): the early-warning sampler's function mode sent nn.MultiheadAttention
    # off its fused fast path on every sampled step, so the user's numbers changed there: the
    # fully padded sample of step 2 gave zeros instead of the NaN the run gives unwatched.
    from tests.compat import mha_teacher
    torch.manual_seed(0)
    model = mha_teacher.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    watch = nandoctor.watch(model, opt, out=tmp_path, warn=False, early_warnings={"every": 1})
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for step in range(4):
            batch = mha_teacher.get_batch(step)
            with watch.step(batch):
                watch.loss(mha_teacher.training_step(model, batch)).backward()
                opt.step()
                opt.zero_grad()
    assert caught.value.step == 2 and "loss" in caught.value.what


def test_transformers_callback_with_gradient_checkpointing_sdpa_and_a_worker_stops_at_the_nan_batch(tmp_path):
    # The Hugging Face Trainer's own settings: gradient_checkpointing (reentrant), GPT-2's SDPA
    # attention, a DataLoader worker. The NaN embedding of item 22 is step 5's batch.
    pytest.importorskip("transformers")
    import warnings
    from transformers import Trainer, TrainingArguments
    from test_integrations import EmbedsDataset, hf_callback, tiny_gpt2
    callback = hf_callback(tmp_path)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=8, per_device_train_batch_size=4,
                             learning_rate=1e-3, report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                             dataloader_num_workers=1, seed=0, train_sampling_strategy="sequential",
                             gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})
    model = tiny_gpt2()
    assert model.config._attn_implementation == "sdpa"
    trainer = Trainer(model=model, args=args, train_dataset=EmbedsDataset(bad_index=4 * 5 + 2), callbacks=[callback])
    with pytest.raises(nandoctor.NonFiniteError) as caught, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    assert caught.value.step == 5 and "batch" in caught.value.what
    report = nandoctor.replay(caught.value.bundle, experiments=False)
    event = report.trace.runs[0].first_nonfinite
    assert (event.step, event.phase) == (5, "data") and "inputs_embeds" in event.tensor
    assert report.causes[0].id == "data-nonfinite"
