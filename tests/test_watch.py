"""`nandoctor.watch` in a plain training loop: checks, policies, bundles, hooks, statistics."""
from __future__ import annotations

import contextlib
import json
import math
import threading
import warnings

import pytest
import torch
from torch import nn

import nandoctor
from nandoctor.errors import InputError
from nandoctor.load.bundle import read_bundle


class Net(nn.Module):
    """A small classifier whose forward can take the log of a negative number on request."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
        self.gate = nn.Parameter(torch.ones(3))
        self.poison = False
        self.use_gate = False

    def forward(self, x):
        out = self.body(x)
        if self.poison:
            out = out + torch.log(-x[:, :1].abs() - 1)          # log of a negative: NaN
        if self.use_gate:
            out = out + 0.0 * self.gate                         # a zero gradient for `gate`
        return out


def batch_for(step, bad_step=None):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(32, 4, generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    if step == bad_step:
        x[5, 2] = float("nan")
    return x, y


def train(watch, model, opt, steps, bad_data=None, poison_at=None, accumulate=1, bad_micro=None):
    for step in range(steps):
        model.poison = step == poison_at
        for micro in range(accumulate):
            x, y = batch_for(step * accumulate + micro,
                             bad_step=step * accumulate + micro if (step, micro) == bad_micro or step == bad_data else None)
            with watch.step((x, y)):
                loss = watch.loss(nn.functional.cross_entropy(model(x), y)) / accumulate
                loss.backward()
                if micro == accumulate - 1:
                    opt.step()
                    opt.zero_grad()


def fresh(**kwargs):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt


def hook_count(model, opt):
    return (sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
            + len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks))


def test_nan_batch_raises_with_a_bundle_before_the_weights_change(tmp_path):
    model, opt = fresh()
    watch = nandoctor.watch(model, opt, out=tmp_path)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        train(watch, model, opt, 20, bad_data=7)
    err = caught.value
    assert err.step == 7 and "batch" in err.what and err.bundle is not None
    assert all(torch.isfinite(p).all() for p in model.parameters())     # the step never ran
    bundle = read_bundle(err.bundle)
    assert bundle.manifest.step == 7 and bundle.manifest.check == "batch"
    assert bundle.manifest.state == "before-step"
    (x, y), = bundle.micro_batches()
    assert torch.isnan(x).sum() == 1 and y.dtype == torch.int64
    restored = bundle.model_state()
    assert all(torch.equal(restored[k], v) for k, v in model.state_dict().items())
    assert [h["step"] for h in bundle.manifest.history] == list(range(7))
    assert hook_count(model, opt) == 0                 # raising closed the watch


def test_nan_loss_from_the_forward(tmp_path):
    model, opt = fresh()
    with nandoctor.watch(model, opt, out=tmp_path) as watch:
        with pytest.raises(nandoctor.NonFiniteError) as caught:
            train(watch, model, opt, 10, poison_at=4)
    assert caught.value.step == 4 and read_bundle(caught.value.bundle).manifest.check == "loss"


def test_optimizer_nan_with_snapshot_is_bundled_from_before_the_step(tmp_path):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, eps=0.0)   # eps 0: 0/0 on a zero gradient
    watch = nandoctor.watch(model, opt, out=tmp_path, snapshot=True)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for step in range(10):
            model.use_gate = step >= 3
            x, y = batch_for(step)
            with watch.step((x, y)):
                watch.loss(nn.functional.cross_entropy(model(x), y)).backward()
                opt.step()
                opt.zero_grad()
    err = caught.value
    assert err.step == 3 and "gate" in err.what
    bundle = read_bundle(err.bundle)
    assert bundle.manifest.check == "parameters" and bundle.manifest.state == "before-step"
    assert all(torch.isfinite(t).all() for t in bundle.model_state().values())
    state = bundle.optimizer_state_dict()["state"]
    gate = bundle.manifest.optimizer["param_names"].index("gate")
    assert gate not in state and len(state) == 4     # `gate` had no Adam state before its first step


def test_skip_policy_keeps_training_with_finite_weights(tmp_path):
    model, opt = fresh()
    watch = nandoctor.watch(model, opt, out=tmp_path, on_nonfinite="skip")
    with pytest.warns(nandoctor.NonFiniteWarning, match="skipped"):
        train(watch, model, opt, 12, bad_data=3)
    watch.close()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert watch.step_index == 12 and [e["step"] for e in watch.events] == [3]
    assert [h["step"] for h in watch.history if h["skipped"]] == [3]
    # One bundle, and the skip list that names the skipped step (issue 21).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["skip_list.json", "step-000003"]


def test_warn_policy_writes_one_bundle_and_continues(tmp_path):
    model, opt = fresh()
    watch = nandoctor.watch(model, opt, out=tmp_path, on_nonfinite="warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(watch, model, opt, 8, bad_data=2)
    watch.close()
    assert watch.step_index == 8
    assert any(issubclass(w.category, nandoctor.NonFiniteWarning) for w in caught)
    assert len(list(tmp_path.iterdir())) == 1          # max_bundles=1: the first event only


def test_gradient_accumulation_bundles_every_micro_batch(tmp_path):
    model, opt = fresh()
    watch = nandoctor.watch(model, opt, out=tmp_path)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        train(watch, model, opt, 10, accumulate=3, bad_micro=(4, 1))
    bundle = read_bundle(caught.value.bundle)
    assert bundle.manifest.step == 4 and bundle.manifest.micro_batches == 3 and bundle.manifest.micro_step == 1
    batches = bundle.micro_batches()
    assert [bool(torch.isnan(x).any()) for x, _ in batches] == [False, True, False]
    assert torch.equal(batches[0][0], batch_for(12)[0])


def test_healthy_run_writes_nothing_and_memory_stays_bounded(tmp_path):
    model, opt = fresh()
    seen = []
    watch = nandoctor.watch(model, opt, out=tmp_path / "b", stats_every=50, window=4,
                            sink=lambda step, metrics: seen.append((step, metrics)))
    hooks_during = []
    train(watch, model, opt, 300)
    hooks_during.append(hook_count(model, opt))
    watch.close()
    assert not (tmp_path / "b").exists()
    assert len(watch.history) == 4 and len(watch.layer_stats) == 4
    assert [s["step"] for s in watch.layer_stats] == [100, 150, 200, 250]
    assert [s for s, _ in seen] == list(range(300))
    assert all(math.isfinite(m["loss"]) and m["grad_norm"] > 0 for _, m in seen)
    stats_metrics = dict(seen[250][1])
    assert "grad_norm/body.0" in stats_metrics and stats_metrics["fp16_headroom/body.2"] > 1
    # optimizer pre + post, the model's forward pre-hook (kept with watch.step(): removing it would
    # recompile a train step compiled around the model) and output hook; the autocast probes on the
    # direct children end with the first step that trained without autocast
    assert hooks_during == [4] and hook_count(model, opt) == 0


def test_summary_writer_sink(tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    model, opt = fresh()
    writer = SummaryWriter(tmp_path / "tb")
    with nandoctor.watch(model, opt, out=tmp_path / "b", sink=writer, stats_every=2) as watch:
        train(watch, model, opt, 4)
    writer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    tags = events.Tags()["scalars"]
    assert "nandoctor/loss" in tags and "nandoctor/grad_norm/body.0" in tags
    assert [e.step for e in events.Scalars("nandoctor/loss")] == [0, 1, 2, 3]


def test_loss_scale_collapse_is_reported(tmp_path):
    model, opt = fresh()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    watch = nandoctor.watch(model, opt, scaler, out=tmp_path, on_nonfinite="warn", skip_streak=3)
    with pytest.warns(nandoctor.NonFiniteWarning, match="skipped 3 steps in a row after it had settled"):
        for step in range(6):
            x, y = batch_for(step)
            with watch.step((x, y)):
                loss = watch.loss(nn.functional.cross_entropy(model(x), y))
                # One update settles the scale; then gradients overflow at every scale.
                scaler.scale(loss * (1e35 if step else 1e-3)).backward()
                scaler.step(opt)
                scaler.update()
                opt.zero_grad()
    watch.close()
    assert watch.skipped_steps == 5 and watch.events[0]["check"] == "loss-scale" and len(watch.events) == 1
    assert "update" not in scaler.__dict__                 # the scaler is left as it was


def test_tied_weights_are_stored_once(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, x):
            return self.head(self.embed(x)).mean(1)

    model = Tied()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = nandoctor.watch(model, opt, out=tmp_path)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for step in range(3):
            x = torch.randint(0, 10, (2, 5))
            with watch.step(x):
                loss = watch.loss(model(x).sum() * (float("inf") if step == 2 else 1.0))
                loss.backward()
                opt.step()
                opt.zero_grad()
    bundle = read_bundle(caught.value.bundle)
    assert bundle.manifest.tied == {"head.weight": "embed.weight"}
    state = bundle.model_state()
    assert torch.equal(state["head.weight"], state["embed.weight"])
    model.load_state_dict(state)


def test_watch_works_off_the_main_thread(tmp_path):
    model, opt = fresh()
    result = {}

    def body():
        watch = nandoctor.watch(model, opt, out=tmp_path)
        try:
            train(watch, model, opt, 6, bad_data=2)
        except nandoctor.NonFiniteError as err:
            result["step"] = err.step

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(30)
    assert result == {"step": 2}


def test_bad_bundles_are_input_errors(tmp_path):
    model, opt = fresh()
    watch = nandoctor.watch(model, opt, out=tmp_path)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        train(watch, model, opt, 3, bad_data=1)
    folder = caught.value.bundle
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["model.pt"] = {"bytes": 1}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="never unpickles"):
        read_bundle(folder)
    with pytest.raises(InputError, match="not a nandoctor crash bundle"):
        read_bundle(tmp_path)


def test_check_every_folds_unchecked_steps_into_the_next_check(tmp_path):
    model, opt = fresh()
    watch = nandoctor.watch(model, opt, out=tmp_path, check_every=4, stats_every=0)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        train(watch, model, opt, 20, bad_data=5)
    # step 5's batch is only looked at by the sync of step 8, the next checked step
    assert caught.value.step == 8 and "covers steps 5..8" in caught.value.what
    assert read_bundle(caught.value.bundle).manifest.check == "batch"


# ---- a watch that survives real loops ------------------------------------------------------------

def test_hooks_alone_are_enough_no_watch_step_needed(tmp_path):
    """No re-indentation: the model's training forward marks the micro-batch by itself."""
    model, opt = fresh()
    watch = nandoctor.watch(model, opt, out=tmp_path)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for step in range(4):
            model.poison = step == 2
            x, y = batch_for(step)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
    assert caught.value.step == 2
    bundle = read_bundle(caught.value.bundle)
    batch = bundle.micro_batches()[0]
    assert torch.equal(batch["args"][0], batch_for(2)[0])        # the model's own input, captured
    assert "nandoctor replay" in str(caught.value)


def test_a_disabled_grad_scaler_is_no_scaler(tmp_path):
    """nanoGPT always builds GradScaler(enabled=(dtype == 'float16')): off, it must not make the
    watch treat NaN gradients as the scaler's skips."""
    model, opt = fresh()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    watch = nandoctor.watch(model, opt, scaler=scaler, out=tmp_path)
    assert watch.scaler is None and watch.precision == "32-true"
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for step in range(4):
            model.poison = step == 1
            x, y = batch_for(step)
            scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    assert caught.value.step == 1                    # fired at the failing step, not a step late


def test_watch_without_an_optimizer_guards_a_hand_written_update(tmp_path):
    model, _ = fresh()
    watch = nandoctor.watch(model, out=tmp_path)
    assert watch.gradient_check == "backward"
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for step in range(4):
            model.poison = step == 2
            x, y = batch_for(step)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()                          # the step ends with the backward pass
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-0.1)
                        p.grad = None
    assert caught.value.step == 2 and caught.value.what.startswith("non-finite gradients")
    assert all(torch.isfinite(p).all() for p in model.parameters())   # stopped before the update
    assert len(watch.history) == 2 and watch.history[-1]["lr"] is None


def test_a_forward_that_raises_on_a_nan_batch_still_leaves_a_bundle(tmp_path):
    model = nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = nandoctor.watch(model, opt, out=tmp_path, warn=False)
    x = torch.randn(8, 4)
    x[5, 1] = float("nan")
    with pytest.raises(RuntimeError) as caught:
        with watch.step((x, None)):
            torch.nn.functional.binary_cross_entropy(model(x).squeeze(-1), torch.ones(8))
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert "sample rows 5" in notes and "nandoctor replay" in notes
    assert watch.bundles and watch.events[-1]["check"] == "batch"


def test_an_accelerate_style_wrapped_optimizer_is_unwrapped(tmp_path):
    model, opt = fresh()

    class Wrapped:                                  # AcceleratedOptimizer keeps the torch one in .optimizer
        def __init__(self, optimizer):
            self.optimizer = optimizer

    watch = nandoctor.watch(model, Wrapped(opt), out=tmp_path)
    assert watch.optimizer is opt
    watch.close()


def test_history_carries_param_norm_and_update_ratio(tmp_path):
    model, opt = fresh()
    watch = nandoctor.watch(model, opt, out=tmp_path, stats_every=2)
    train(watch, model, opt, 6)
    watch.close()
    entries = list(watch.history)
    # The weights are read on statistics steps (and at least every RECHECK_EVERY updates: test_update_bounds.py)
    assert [e["step"] for e in entries if e.get("param_norm", 0) > 0] == [0, 2, 4]
    assert [e["step"] for e in entries if "update_ratio" in e] == [0, 2, 4]
    assert all(0 < e["update_ratio"] < 1 for e in entries if "update_ratio" in e)


# ---- the per-step checks are exact (witnesses, grouped norms) ----------------------------------------

def _stacked_model():
    torch.manual_seed(0)
    # 12 same-shaped layers: their weights and biases are normed as stacks (stats.GroupedNorms)
    return nn.Sequential(nn.Linear(4, 6), *[m for _ in range(12) for m in (nn.Linear(6, 6), nn.Tanh())], nn.Linear(6, 3))


def test_huge_finite_values_pass_and_one_inf_in_the_batch_fires(tmp_path):
    """A batch is checked by a float32 sum (stats.nonfinite_witness, quick), confirmed on the batch
    when it trips: finite values near float32's and float64's limits, whose plain sums overflow,
    never fire; a single Inf does."""
    model = _stacked_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    watch = nandoctor.watch(model, opt, out=tmp_path, stats_every=0)
    side = {"f32": torch.full((64,), 3e38), "f64": torch.full((64,), 1e308, dtype=torch.float64),
            "f16": torch.full((64,), 6e4, dtype=torch.float16)}
    for step in range(4):
        x, y = batch_for(step)
        if step == 3:
            side["f32"][7] = float("inf")
        with pytest.raises(nandoctor.NonFiniteError) if step == 3 else contextlib.nullcontext() as caught:
            with watch.step((x, y, side)):
                watch.loss(nn.functional.cross_entropy(model(x), y)).backward()
                opt.step()
                opt.zero_grad()
    assert caught.value.step == 3 and read_bundle(caught.value.bundle).manifest.check == "batch"


def test_history_norms_equal_torchs_and_a_nan_in_one_stacked_weight_is_named(tmp_path):
    model = _stacked_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    steps = []

    def optimizer_goes_wrong(*_):          # registered first: runs before the watch's own post-hook
        if len(steps) == 3:
            with torch.no_grad():
                model[15].weight[2, 1] = float("nan")     # the 8th of 12 stacked weights
    opt.register_step_post_hook(optimizer_goes_wrong)
    watch = nandoctor.watch(model, opt, out=tmp_path, stats_every=0)
    grad_norms, param_norms = [], []
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for step in range(6):
            x, y = batch_for(step)
            with watch.step((x, y)):
                watch.loss(nn.functional.cross_entropy(model(x), y)).backward()
                grad_norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])))
                opt.step()
                opt.zero_grad()
                param_norms.append(float(torch.nn.utils.get_total_norm(list(model.parameters()))))
            steps.append(step)
    history = list(watch.history)
    assert [h["grad_norm"] for h in history] == pytest.approx(grad_norms[:4], rel=1e-5)
    assert [h["param_norm"] for h in history[:3]] == pytest.approx(param_norms[:3], rel=1e-5)
    # checked at the next step's sync, before its optimizer step uses the weights
    assert caught.value.step == 3 and "15.weight" in caught.value.what and "15.bias" not in caught.value.what


@pytest.mark.parametrize("failing", [3, 6])
def test_python_rng_of_a_step_is_its_state_even_when_unchanged_reseeded_or_a_gaussian_is_cached(tmp_path, failing):
    """Python's global state is read in place and re-read only when its words or its cached
    Gaussian moved (bundle_writer._python_state): the bundle holds the state the failing step
    began with, whichever way the loop used the generator before it."""
    import random
    model, opt = fresh()
    watch = nandoctor.watch(model, opt, out=tmp_path, stats_every=0)
    random.seed(0)
    began = []
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for step in range(7):
            if step == 2:
                random.gauss(0, 1)         # step 2 begins with a cached Gaussian ...
            if step == 3:
                random.gauss(0, 1)         # ... step 3 after using it: the words did not move
            if step == 5:
                random.seed(5)
            began.append(random.getstate())
            x, y = batch_for(step, bad_step=failing)
            with watch.step((x, y)):
                watch.loss(nn.functional.cross_entropy(model(x), y)).backward()
                opt.step()
                opt.zero_grad()
    from nandoctor.watcher.bundle_writer import capture_rng
    assert capture_rng()["python"] == random.getstate()
    bundle = read_bundle(caught.value.bundle)
    assert bundle.manifest.rng["python"]["gauss_next"] == began[failing][2]
    assert bundle.rng_tensors()["python"].tolist() == list(began[failing][1])
    assert began[2][2] is not None and began[3][2] is None and began[2][1] == began[3][1]


def test_numpy_rng_of_a_step_is_its_state_even_when_unchanged_or_a_gaussian_is_cached(tmp_path):
    """numpy's global state is re-read only when its words moved; a cached Gaussian (consumed
    without moving them) must not be missed: the bundle holds the state the failing step began with."""
    np = pytest.importorskip("numpy")
    model, opt = fresh()
    watch = nandoctor.watch(model, opt, out=tmp_path, stats_every=0)
    np.random.seed(0)
    began = []
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for step in range(6):
            began.append(np.random.get_state())
            x, y = batch_for(step, bad_step=5)
            if step in (2, 4):
                np.random.randn()          # step 3 begins with a cached Gaussian, step 5 after using it
            with watch.step((x, y)):
                watch.loss(nn.functional.cross_entropy(model(x), y)).backward()
                opt.step()
                opt.zero_grad()
    bundle = read_bundle(caught.value.bundle)
    saved = bundle.manifest.rng["numpy"]
    expected = began[5]
    assert saved["pos"] == expected[2] and saved["has_gauss"] == expected[3] == 0
    assert bundle.rng_tensors()["numpy"].tolist() == expected[1].astype("int64").tolist()
