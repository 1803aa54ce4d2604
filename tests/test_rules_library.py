"""Library frames on hand-made traces: a finding's place and fix are the user's line or a trainer
setting, never a line of an installed package; the library line stays in the evidence. The
empty-reduction of a library's loss and the eps of a Hugging Face run. Through the public diagnose
API only (no model, no torch)."""
from __future__ import annotations

from nandoctor.diagnose import diagnose
from nandoctor.trace import (BatchTensorStats, NonfiniteEvent, OpRef, RunTrace, SourceLocation, StepRecord,
                             TensorSummary, Trace, UserError)

SITE = "/venv/lib/python3.11/site-packages/transformers/loss/loss_utils.py"
LIBRARY = SourceLocation(SITE, 48, "fixed_cross_entropy", "loss = loss / num_items_in_batch", library=True)
NLL = OpRef(op="aten.nll_loss_forward.default", module="", source=SourceLocation(SITE, 43, library=True))
USER = SourceLocation("train.py", 30, "training_step", "loss = model(**batch).loss")
LABELS_LINE = SourceLocation("model.py", 16, "get_batch", "labels = torch.full_like(ids, -100)")


def trace_of(*runs: RunTrace, framework=None) -> Trace:
    return Trace(model_file="model.py", config={"grad_clip": None, "loss_scale": "dynamic", "thresholds": {}},
                 device="cpu", torch_version="x", tool_version="x", runs=list(runs), framework=framework)


def ids(findings) -> list[str]:
    return [f.id for f in findings]


def zero(name: str, dtype="float32") -> TensorSummary:
    return TensorSummary(name=name, shape=[], dtype=dtype, min=0.0, max=0.0, zeros=1)


def failing(event: NonfiniteEvent, batch=(), **run) -> RunTrace:
    record = StepRecord(step=event.step, loss=float("nan"), batch=list(batch))
    return RunTrace(precision="32-true", status="nonfinite", steps=[record], first_nonfinite=event, **run)


def division(**kw) -> NonfiniteEvent:
    """Hugging Face's `loss / num_items_in_batch` at 0.0 / 0.0 (both float), inside transformers."""
    kw.setdefault("producer", NLL)
    return NonfiniteEvent(precision="32-true", step=5, phase="forward", kind="nan", op="aten.div.Tensor",
                          source=LIBRARY, inputs=[zero("input0"), zero("input1")], reproduced=True,
                          surfaced_in="loss", **kw)


def all_ignored(n=32) -> BatchTensorStats:
    return BatchTensorStats(name="inputs[0]['labels']", dtype="int64", shape=[4, n // 4], numel=n, min=-100.0,
                            max=-100.0, max_abs=100.0, source=LABELS_LINE)


def assert_no_library_place(finding) -> None:
    assert finding.source is None or not finding.source.library, finding
    assert "site-packages" not in finding.fix and "site-packages" not in finding.title, finding


def test_a_library_loss_dividing_zero_by_zero_over_ignored_labels_is_an_empty_reduction():
    """Regression: a Hugging Face batch whose every label is -100 was unstable-op 0/0 at
    transformers/loss/loss_utils.py:48, with a fix to edit that file."""
    findings = diagnose(trace_of(failing(division(), batch=[all_ignored()])))
    top = findings[0]
    assert top.id == "empty-reduction" and "unstable-op" not in ids(findings)
    text = " ".join(top.evidence)
    assert "32 of 32 labels in inputs[0]['labels'] equal ignore_index (-100)" in text
    assert "inside transformers, at " + SITE + ":48" in text            # the library line: detail
    assert top.source == LABELS_LINE and "dataset.filter" in top.fix
    assert_no_library_place(top)


def test_the_count_can_come_from_the_op_or_the_producer_and_a_plain_ratio_stays_unstable():
    labels_in_op = NonfiniteEvent(precision="32-true", step=2, phase="forward", kind="nan",
                                  op="aten.nll_loss_forward.default", source=LIBRARY, reproduced=True,
                                  inputs=[TensorSummary(name="input0", shape=[48, 5], dtype="float32", min=-2.0, max=-1.0),
                                          TensorSummary(name="input1", shape=[48], dtype="int64", min=-100, max=-100)])
    top = diagnose(trace_of(failing(labels_in_op)))[0]
    assert top.id == "empty-reduction" and "48 of 48 labels in input1" in " ".join(top.evidence)
    assert top.source is None and "-100" in top.fix
    assert diagnose(trace_of(failing(division())))[0].id == "empty-reduction"        # sum of nll over nothing / 0
    iou = division(producer=OpRef(op="aten.sum.default", module="", source=SourceLocation("model.py", 9)))
    assert diagnose(trace_of(failing(iou)))[0].id == "unstable-op"


def test_an_op_that_ran_only_in_library_code_is_fixed_in_what_the_user_hands_it():
    event = NonfiniteEvent(precision="32-true", step=3, phase="forward", kind="inf", op="aten.log.default",
                           source=SourceLocation(SITE, 12, code="y = torch.log(x)", library=True), reproduced=True,
                           inputs=[TensorSummary(name="input0", shape=[8], dtype="float32", min=0.0, max=2.0, zeros=3)])
    top = diagnose(trace_of(failing(event)))[0]
    assert top.id == "unstable-op" and top.source is None
    assert "inside transformers, not in your files" in top.fix
    assert SITE + ":12" in " ".join(top.evidence)
    assert_no_library_place(top)


def test_a_user_call_into_a_library_points_at_the_user_call():
    event = division(user_source=USER, producer=OpRef(op="aten.sum.default", module="",
                                                      source=SourceLocation(SITE, 40, library=True)))
    top = diagnose(trace_of(failing(event)))[0]
    assert top.id == "unstable-op" and top.source == USER and "train.py:30" in top.fix
    assert "in library code at " + SITE + ":40" in " ".join(top.evidence)      # the producer, said to be library
    assert_no_library_place(top)


def test_an_exception_raised_inside_a_library_is_not_placed_there():
    error = UserError(phase="forward", exc_type="RuntimeError", message="shape mismatch",
                      source=SourceLocation(SITE, 99, library=True))
    run = RunTrace(precision="32-true", status="error", steps=[], error=error)
    top = diagnose(trace_of(run))[0]
    assert top.id == "user-error" and top.source is None and SITE not in top.fix
    assert any("raised inside library code" in e for e in top.evidence)


def _optimizer_nan(eps) -> RunTrace:
    event = NonfiniteEvent(precision="32-true", step=0, phase="optimizer", kind="nan", parameter="transformer.wpe.weight",
                           module="transformer.wpe", surfaced_in="parameters")
    return failing(event, optimizer={"name": "AdamW", "lr": 1e-3, "eps": eps})


def test_eps_zero_in_a_hugging_face_run_names_the_trainer_argument():
    top = diagnose(trace_of(_optimizer_nan(0.0), framework="huggingface"))[0]
    assert top.id == "optimizer-eps" and top.title == "AdamW eps is 0: the update divides 0 by 0"
    assert "`--adam_epsilon 1e-8`" in top.fix and "TrainingArguments(adam_epsilon=1e-8)" in top.fix
    plain = diagnose(trace_of(_optimizer_nan(0.0), framework="plain"))[0]
    assert "where your training script constructs the optimizer" in plain.fix and "adam_epsilon" not in plain.fix


def test_eps_zero_is_a_warning_in_any_dtype_before_it_fails():
    clean = RunTrace(precision="32-true", steps=[StepRecord(step=0, loss=1.0)], optimizer={"name": "Adam", "eps": 0.0})
    findings = diagnose(trace_of(clean))
    assert ids(findings) == ["optimizer-eps"] and findings[0].severity == "warning"
    assert "eps=1e-8" in findings[0].fix and "config `optimizer.eps`" in findings[0].fix
    hf = diagnose(trace_of(clean, framework="huggingface"))[0]
    assert "--adam_epsilon" in hf.fix
    fine = RunTrace(precision="32-true", steps=[StepRecord(step=0, loss=1.0)], optimizer={"name": "Adam", "eps": 1e-8})
    assert diagnose(trace_of(fine)) == []
