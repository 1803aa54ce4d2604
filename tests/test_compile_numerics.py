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
