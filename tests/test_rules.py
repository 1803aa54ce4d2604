"""Rules on hand-made traces: no model, no torch hooks; plus the trace's JSON round trip."""
from __future__ import annotations

import json

from nandoctor.diagnose import diagnose, explain, rule_ids, verdict
from nandoctor.trace import (BatchTensorStats, ExperimentResult, LayerSeries, NonfiniteEvent, ParamSeries, RunTrace,
                             SourceLocation, StepRecord, TensorSummary, Trace)

CONFIG = {"grad_clip": None, "loss_scale": "dynamic", "thresholds": {}}


def trace_of(*runs: RunTrace, experiments=()) -> Trace:
    return Trace(model_file="m.py", config=dict(CONFIG), device="cpu", torch_version="x", tool_version="x",
                 runs=list(runs), experiments=list(experiments))


def steps(losses, **kw):
    return [StepRecord(step=i, loss=l, **kw) for i, l in enumerate(losses)]


def test_nan_data_outranks_everything_downstream():
    run = RunTrace(precision="32-true", status="nonfinite", steps=steps([1.0, 1.1]),
                   first_nonfinite=NonfiniteEvent(precision="32-true", step=1, phase="data", kind="nan",
                                                  tensor="inputs", count=3, detail="inputs: 3 NaN"))
    findings = diagnose(trace_of(run))
    assert findings[0].id == "data-nonfinite" and verdict(findings) == "fail"
    assert "3 NaN" in findings[0].evidence[0]


def test_high_lr_needs_large_updates_and_is_confirmed_by_a_lower_lr():
    layer = LayerSeries(module="fc", type="Linear", index=1,
                        series={"update_ratio": [0.02, 0.9, 3.0], "param_grad_norm": [1.0, 5.0, 50.0],
                                "act_max_abs": [1, 10, 100], "param_norm": [1, 2, 8]})
    run = RunTrace(precision="32-true", status="nonfinite", steps=steps([1.0, 30.0, 900.0]), layers=[layer],
                   optimizer={"name": "SGD", "lr": 2.0},
                   first_nonfinite=NonfiniteEvent(precision="32-true", step=3, phase="forward", kind="inf",
                                                  op="aten.addmm.default", module="fc"))
    experiment = ExperimentResult(id="lower-lr", label="lr 2e+00 -> 2e-01", precision="32-true", steps_run=20,
                                  outcome="finite")
    findings = diagnose(trace_of(run, experiments=[experiment]))
    top = findings[0]
    assert top.id == "high-lr" and top.confirmed is True and top.confidence > 0.8
    assert "update ratio 0.9" in top.evidence[0] or "update ratio 3" in top.evidence[0]
    assert "2e-01" in top.fix


def test_fp16_overflow_only_when_wider_precisions_are_clean():
    event = NonfiniteEvent(precision="16-mixed", step=0, phase="forward", kind="inf", op="aten.bmm.default",
                           module="attn", inputs=[TensorSummary(name="input0", shape=[2], dtype="float16",
                                                                min=-300.0, max=300.0)])
    fp16 = RunTrace(precision="16-mixed", status="nonfinite", steps=steps([1.0]), first_nonfinite=event)
    clean = RunTrace(precision="32-true", steps=steps([1.0, 0.9]))
    assert diagnose(trace_of(clean, fp16))[0].id == "fp16-overflow"
    also_failing = RunTrace(precision="32-true", status="nonfinite", steps=steps([1.0]),
                            first_nonfinite=NonfiniteEvent(precision="32-true", step=0, phase="forward", kind="inf",
                                                           op="aten.bmm.default"))
    assert all(f.id != "fp16-overflow" for f in diagnose(trace_of(also_failing, fp16)))


def test_skipped_steps_that_keep_coming_are_a_collapse():
    records = steps([1.0] * 9)
    records[0].loss_scale = 65536.0            # one update: the scale had settled
    for r, scale in zip(records[1:], [65536 / 2**i for i in range(8)]):
        r.skipped, r.loss_scale, r.nonfinite_grads = True, scale, ["head.weight"]
    run = RunTrace(precision="16-mixed", steps=records)
    top = diagnose(trace_of(run, RunTrace(precision="32-true", steps=steps([1.0] * 9))))[0]
    assert top.id == "loss-scale-collapse" and top.severity == "error" and "head.weight" in top.evidence[1]
    healthy = steps([1.0] * 8)
    healthy[0].skipped = True
    assert diagnose(trace_of(RunTrace(precision="16-mixed", steps=healthy))) == []


def test_a_scaler_calibrating_from_its_initial_scale_is_not_a_collapse_until_the_floor():
    # Regression (issue 18): 8 skips from 65536 down to 256 before the first update are GradScaler
    # calibrating, not a collapse; 18 (the scale down to 0.5, below the floor of 1) are.
    for skips, collapsed in ((8, False), (18, True)):
        records = steps([1.0] * (skips + 4))
        for i, r in enumerate(records):
            r.skipped, r.loss_scale = i < skips, 65536 / 2 ** min(i, skips)
        ids = [f.id for f in diagnose(trace_of(RunTrace(precision="16-mixed", steps=records)))]
        assert ("loss-scale-collapse" in ids) is collapsed


def test_vanishing_gradients_is_a_warning_with_numbers():
    def layer(name, i, g):
        return LayerSeries(module=name, type="Linear", index=i, series={"param_grad_norm": [g] * 4})
    run = RunTrace(precision="32-true", steps=steps([1.0] * 4),
                   layers=[layer("l0", 1, 1e-9), layer("l1", 2, 1e-5), layer("l2", 3, 1e-1)])
    findings = diagnose(trace_of(run))
    assert [f.id for f in findings] == ["vanishing-gradients"] and verdict(findings) == "warn"
    assert "1.00e-9" in findings[0].evidence[0]


def test_data_scale_is_an_error_once_the_run_diverges():
    records = steps([1e3, 1e7])
    for r in records:
        r.batch = [BatchTensorStats(name="inputs", dtype="float32", shape=[4, 2], numel=8, max_abs=5e5,
                                    source=SourceLocation("m.py", 9))]
    findings = diagnose(trace_of(RunTrace(precision="32-true", steps=records)))
    assert findings[0].id == "data-scale" and findings[0].severity == "error" and str(findings[0].source) == "m.py:9"


def test_every_rule_documents_itself():
    for cause in rule_ids():
        text = explain(cause)
        for heading in ("What it detects:", "Why it produces NaN or Inf:", "Evidence used:", "How to fix:", "Example:"):
            assert heading in text, (cause, heading)


def test_trace_round_trips_through_json_including_non_finite_numbers():
    run = RunTrace(precision="16-mixed", status="nonfinite", steps=steps([1.0, float("nan")]),
                   params=[ParamSeries(name="w", module="", shape=[2], dtype="float32", series={"norm": [float("inf")]})],
                   first_nonfinite=NonfiniteEvent(precision="16-mixed", step=1, phase="loss", kind="nan",
                                                  source=SourceLocation("m.py", 3, "f", "x = y")))
    trace = trace_of(run)
    text = json.dumps(trace.to_dict(), allow_nan=False)
    back = Trace.from_dict(json.loads(text))
    assert back.runs[0].first_nonfinite.source == SourceLocation("m.py", 3, "f", "x = y")
    assert back.runs[0].params[0].series["norm"] == [float("inf")]
    assert str(back.runs[0].steps[1].loss) == "nan"
    assert back.to_dict() == trace.to_dict()


def test_a_failure_that_does_not_reproduce_is_its_own_finding_and_still_fails():
    """Regression (issue 9): a non-reproduced NaN used to leave only a warning, so the run passed the gate."""
    from nandoctor.diagnose import verdict
    from nandoctor.diagnose.verdict import scan_failed
    event = NonfiniteEvent(precision="32-true", step=7, phase="backward", kind="nan", reproduced=False,
                           detail="step 7 stayed finite when replayed from the same state")
    trace = trace_of(RunTrace(precision="32-true", status="nonfinite", steps=steps([1.0] * 8), first_nonfinite=event))
    findings = diagnose(trace)
    by_id = {f.id: f for f in findings}
    # The run went non-finite, so the finding is an error and is itself the explanation: no
    # `unexplained-nonfinite` fallback beside it.
    assert by_id["nonreproducible"].severity == "error"
    assert "use_deterministic_algorithms" in by_id["nonreproducible"].fix
    assert "unexplained-nonfinite" not in by_id
    assert verdict(findings, scan_failed(trace)) == "fail"
