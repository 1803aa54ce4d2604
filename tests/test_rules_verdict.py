"""The promise that outranks everything, as a property: a run that went non-finite or raised
never passes, whatever op, phase, statistics or precision the trace records, and whether or
not a specific rule recognises the mechanism."""
from __future__ import annotations

import math

from hypothesis import given, settings, strategies as st

from nandoctor.diagnose import diagnose, verdict
from nandoctor.diagnose.verdict import scan_failed
from nandoctor.trace import (LayerSeries, NonfiniteEvent, OpRef, RunTrace, SourceLocation, StepRecord, TensorSummary,
                             Trace, UserError)
from nandoctor.trace.vocab import ErrorCategory, Phase, Precision, RunStatus

OPS = [None, "aten.log.default", "aten.div.Tensor", "aten.mul.Tensor", "aten.sum.default", "aten.mm.default",
       "aten._softmax.default", "aten.sqrt.default", "aten.pow.Tensor_Scalar", "aten.addcdiv_.default",
       "aten.scalar_tensor.default", "aten.lift_fresh.default", "aten.mean.default", "aten.nextafter.default",
       "aten._ctc_loss.Tensor", "aten.logsumexp.default"]
numbers = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32))
counts = st.integers(min_value=0, max_value=64)

summaries = st.builds(
    TensorSummary, name=st.sampled_from(["input0", "input1", "scalar"]), shape=st.lists(st.integers(0, 8), max_size=3),
    dtype=st.sampled_from(["float32", "float16", "bfloat16", "float", "int64"]), min=numbers, max=numbers,
    nan=counts, inf=counts, zeros=counts, negatives=counts, value=numbers, masked=st.booleans())
places = st.one_of(st.none(), st.builds(SourceLocation, file=st.just("model.py"), line=st.integers(1, 99),
                                        code=st.sampled_from(["", "y = torch.where(m, torch.log(x), 0)"])))
refs = st.one_of(st.none(), st.builds(OpRef, op=st.sampled_from([o for o in OPS if o]), module=st.just(""), source=places))


@st.composite
def events(draw, precision: str) -> NonfiniteEvent:
    return NonfiniteEvent(
        precision=precision, step=draw(st.integers(0, 3)), phase=draw(st.sampled_from([p.value for p in Phase])),
        kind=draw(st.sampled_from(["nan", "inf"])), module=draw(st.sampled_from(["", "fc", "rnn"])),
        op=draw(st.sampled_from(OPS)), user_source=draw(places), forward_op=draw(st.sampled_from([None, "sqrt", "logsumexp"])),
        inputs=draw(st.lists(summaries, max_size=3)), producer=draw(refs), masked_input=draw(st.booleans()),
        reproduced=draw(st.sampled_from([None, True, False])), surfaced_in=draw(st.sampled_from(["", "loss", "gradients"])),
        call=draw(st.sampled_from([None, "torch.logdet"])), scalar_source=draw(refs), mask_source=draw(refs),
        parameter=draw(st.sampled_from([None, "fc.weight"])))


@st.composite
def runs(draw) -> RunTrace:
    precision = draw(st.sampled_from([p.value for p in Precision]))
    status = draw(st.sampled_from([s.value for s in RunStatus]))
    losses = draw(st.lists(numbers, min_size=0, max_size=4))
    run = RunTrace(precision=precision, status=status, steps=[StepRecord(step=i, loss=l) for i, l in enumerate(losses)],
                   optimizer=draw(st.sampled_from([{}, {"name": "Adam", "lr": 1e-3, "eps": 0.0},
                                                   {"name": "SGD", "lr": math.inf}])),
                   layers=draw(st.lists(st.builds(LayerSeries, module=st.sampled_from(["fc", "rnn"]), type=st.just("Linear"),
                                                  index=st.integers(0, 3),
                                                  series=st.fixed_dictionaries({"act_max_abs": st.lists(numbers, max_size=3)})),
                                        max_size=2)))
    if status == RunStatus.NONFINITE.value:
        run.first_nonfinite = draw(events(precision))
    elif status == RunStatus.ERROR.value:
        run.error = UserError(phase=draw(st.sampled_from([p.value for p in Phase])), exc_type="RuntimeError",
                              message="boom", user_source=draw(places),
                              category=draw(st.sampled_from([c.value for c in ErrorCategory])))
    return run


@settings(max_examples=300, deadline=None)
@given(st.lists(runs(), min_size=1, max_size=3))
def test_a_run_that_went_nonfinite_or_raised_never_passes(run_list):
    trace = Trace(model_file="model.py", config={"thresholds": {}}, device="cpu", torch_version="x", tool_version="x",
                  runs=run_list)
    findings = diagnose(trace)
    failed = any(RunStatus(r.status).failed for r in run_list)
    assert scan_failed(trace) == failed
    if failed:
        # Not only the gate's fact: the findings themselves carry an error that explains it.
        assert verdict(findings) == "fail", [(f.id, f.severity) for f in findings]
        assert verdict(findings, failed=scan_failed(trace)) == "fail"
    for finding in findings:
        assert finding.rank_reason, finding.id
    assert [f.id for f in diagnose(Trace.from_dict(trace.to_dict()))] == [f.id for f in findings]
