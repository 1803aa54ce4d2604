"""A replay's past on hand-made traces: the watched run's history window is evidence (high-lr),
weights that have already taken steps are not an initialisation (bad-init), and a finding its
own experiment refuted never leads. Through the public diagnose API only (no model, no torch)."""
from __future__ import annotations

from nandoctor.diagnose import diagnose, plan_experiments
from nandoctor.trace import (ExperimentResult, LayerSeries, NonfiniteEvent, ParamSeries, RunTrace, SourceLocation,
                             StepRecord, TensorSummary, Trace)

LINE = SourceLocation("model.py", 11, "training_step", "return F.cross_entropy(model(x), y)")


def trace_of(*runs: RunTrace, experiments=(), framework="plain") -> Trace:
    return Trace(model_file="model.py", config={"grad_clip": None, "loss_scale": "dynamic", "thresholds": {}},
                 device="cpu", torch_version="x", tool_version="x", runs=list(runs), experiments=list(experiments),
                 framework=framework)


def ids(findings) -> list[str]:
    return [f.id for f in findings]


def history(losses, lr=10.0, first=30, **series) -> list[StepRecord]:
    """The watch's window: steps `first`, `first + 1`, ... with these losses at learning rate `lr`."""
    records = [StepRecord(step=first + i, loss=loss, lr=lr) for i, loss in enumerate(losses)]
    for key, values in series.items():
        for record, value in zip(records, values):
            setattr(record, key, value)
    return records


# Weights a diverged run left behind: rms far beyond any default init of a Linear this size.
HUGE = [ParamSeries(name="head.weight", module="head", shape=[64, 64], dtype="float32", numel=4096,
                    init_norm=16.8 * 64, init_max_abs=60.0, init_source=SourceLocation("model.py", 145))]
LAYERS = [LayerSeries(module="head", type="Linear", index=1, series={"act_max_abs": [3e19]})]


def replayed(past: list[StepRecord], step: int = 41, op="aten.addmm.default", kind="inf", **event) -> RunTrace:
    """A crash bundle's replay: one step, failing at once, after the watched run's history."""
    return RunTrace(precision="32-true", status="nonfinite", steps_requested=1, start_step=step,
                    steps=[StepRecord(step=step, loss=float("inf"), lr=10.0)], history=past,
                    params=list(HUGE), layers=list(LAYERS), optimizer={"name": "AdamW", "lr": 10.0},
                    first_nonfinite=NonfiniteEvent(precision="32-true", step=step, phase=event.pop("phase", "forward"),
                                                   kind=kind, op=op, module="head", user_source=LINE,
                                                   reproduced=True, surfaced_in="loss", **event))


def test_a_loss_that_rose_by_orders_of_magnitude_in_the_history_is_high_lr_at_the_lr_it_used():
    """Regression: nanoGPT at lr 10 was replayed as bad-init 'at model.py:145' while the bundle's own
    history showed the loss going 4.8 -> 1622 at lr 10."""
    past = history([4.8, 4.6, 5.1, 40.0, 310.0, 1622.0], grad_norm=[0.9, 0.8, 1.2, 30.0, 700.0, 5e3],
                   param_norm=[50.0, 50.0, 51.0, 80.0, 300.0, 900.0])
    findings = diagnose(trace_of(replayed(past)))
    top = findings[0]
    assert top.id == "high-lr" and top.severity == "error" and top.explains_origin
    assert "learning rate 10 is too high" in top.title and "from 10 to 1e+00" in top.fix
    text = " ".join(top.evidence)
    assert "rose from 4.6 at step 31 to 1.62e+03 at step 35 (353x)" in text and "at learning rate 10" in text
    assert "gradient norm grew from 0.8 to 5e+03" in text and "parameter norm grew from 50 to 900" in text
    assert "bad-init" not in ids(findings)
    assert "upstream" in top.rank_reason


def test_a_gradient_norm_held_at_its_clip_is_not_said_to_have_grown():
    """Regression (bench round 5, minGPT clipping at 1.0, lr 100): the evidence read "its gradient
    norm grew from 1 to 1 over the same steps" while the loss rose by 1e9x."""
    past = history([3.1, 40.0, 5e3, 1.8e10], grad_norm=[0.9993, 1.0, 1.0, 1.0], param_norm=[1.7e4, 2e5, 3e7, 8e9])
    top = diagnose(trace_of(replayed(past)))[0]
    text = " ".join(top.evidence)
    assert top.id == "high-lr" and "parameter norm grew from 1.70e4 to 8.00e9" in text
    assert "gradient norm" not in text


def test_large_update_ratios_in_the_history_are_high_lr_even_when_the_loss_has_not_moved_yet():
    past = history([2.3, 2.3, 2.4], update_ratio=[0.002, 0.6, 1.4])
    top = diagnose(trace_of(replayed(past)))[0]
    assert top.id == "high-lr" and "update ratio 1.4 at step 32 in the whole model" in " ".join(top.evidence)


def test_a_history_divergence_outranks_the_op_that_finally_overflowed_even_when_fp64_confirms_it():
    past = history([4.8, 4.7, 90.0, 1622.0])
    run = replayed(past, op="aten.exp.default", inputs=[TensorSummary(name="input0", shape=[8], dtype="float32",
                                                                      min=1.0, max=120.0)])
    fp64 = ExperimentResult(id="step-fp64", label="step 41 re-run in float64", precision="32-true", steps_run=1,
                            outcome="nonfinite", first_bad_step=41)
    findings = diagnose(trace_of(run, experiments=[fp64]))
    assert ids(findings)[:2] == ["high-lr", "unstable-op"] and findings[1].confirmed is True


def test_a_calm_history_is_no_high_lr_and_a_scan_without_history_is_unchanged():
    calm = history([2.3, 2.2, 2.25, 2.1, 2.0])
    assert "high-lr" not in ids(diagnose(trace_of(replayed(calm))))
    noisy = history([0.5, 0.4, 0.45, 2.0, 0.5])                  # a hard batch: 5x, not orders of magnitude
    assert "high-lr" not in ids(diagnose(trace_of(replayed(noisy))))


def test_the_lr_setting_is_named_for_each_kind_of_run():
    past = history([4.8, 1622.0])
    hf = diagnose(trace_of(replayed(past), framework="huggingface"))[0]
    assert "--learning_rate" in hf.fix and "TrainingArguments(learning_rate=" in hf.fix and hf.source is None
    lightning = diagnose(trace_of(replayed(past), framework="lightning"))[0]
    assert "configure_optimizers()" in lightning.fix
    plain = diagnose(trace_of(replayed(past)))[0]
    assert "where your training script constructs AdamW" in plain.fix


def test_no_lr_experiment_for_a_replayed_step_that_fails_before_its_own_update():
    """From weights the history already diverged, the failing step's forward overflows at any lr:
    lr / 10 from there would 'refute' the cause that made those weights."""
    past = history([4.8, 1622.0])
    trace = trace_of(replayed(past))
    assert all(r.id != "lower-lr" for r in plan_experiments(trace, diagnose(trace)))
    in_update = trace_of(replayed(past, phase="optimizer", op="aten._foreach_add_.List"))
    assert any(r.id == "lower-lr" for r in plan_experiments(in_update, diagnose(in_update)))


def test_bad_init_needs_step_zero_weights_from_build_model():
    """Regression: 'weight rms 16.8 at init' for weights that had taken steps at lr 20."""
    later = replayed([], step=41)
    later.first_nonfinite.step = later.start_step
    assert "bad-init" not in ids(diagnose(trace_of(later)))
    with_history = replayed(history([2.3, 2.2]), step=32)
    with_history.start_step = 0                 # even a window that starts at 0 means weights have moved
    assert "bad-init" not in ids(diagnose(trace_of(with_history)))
    fresh = replayed([], step=0)
    fresh.steps[0].step = 0
    assert "bad-init" in ids(diagnose(trace_of(fresh)))


def test_a_parameter_nan_in_a_later_replay_is_not_called_an_initialisation():
    run = replayed(history([4.8, 1622.0]), phase="init", op=None, kind="nan", parameter="head.weight",
                   detail="head.weight: 4096 of 4096 non-finite")
    findings = diagnose(trace_of(run))
    assert "bad-init" not in ids(findings) and findings[0].id == "high-lr"


def test_a_refuted_finding_never_ranks_first():
    """Regression: a Lightning replay ranked bad-init first although its own reinit experiment
    refuted it."""
    fresh = replayed([], step=0)
    fresh.steps[0].step = 0
    fresh.first_nonfinite.step = 0
    reinit = ExperimentResult(id="reinit", label="every module re-initialised with reset_parameters()",
                              precision="32-true", steps_run=1, outcome="nonfinite", first_bad_step=0)
    findings = diagnose(trace_of(fresh, experiments=[reinit]))
    bad_init = next(f for f in findings if f.id == "bad-init")
    assert bad_init.confirmed is False and findings[0] is not bad_init
    assert all(f.confirmed is not False for f in findings[:findings.index(bad_init)])
    assert findings[0].severity == "error"      # the failure is still explained by an unrefuted error
