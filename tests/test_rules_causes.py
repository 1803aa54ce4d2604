"""Every cause rule on hand-made traces: one trace where it fires with the expected evidence,
one where it must stay silent. Through the public diagnose API only (no model, no torch)."""
from __future__ import annotations

import pytest

from nandoctor.diagnose import diagnose, diagnose_checkpoint, explain, plan_experiments, rule_ids, verdict
from nandoctor.trace import (BatchTensorStats, ExperimentResult, LabelCheck, LayerSeries, LoopFacts, NonfiniteEvent, OpRef,
                             ParamSeries, PostmortemTrace, RunTrace, SourceLocation, StepRecord, TensorSummary, Trace,
                             UserError)
from nandoctor.trace.checkpoint import OptimizerRecord, TensorRecord

LINE = SourceLocation("model.py", 14, "forward", "y = torch.log(x)")


def trace_of(*runs: RunTrace, experiments=(), reference=()) -> Trace:
    return Trace(model_file="model.py", config={"grad_clip": None, "loss_scale": "dynamic", "thresholds": {}},
                 device="cpu", torch_version="x", tool_version="x", runs=list(runs), experiments=list(experiments),
                 reference_runs=list(reference))


def steps(losses, **kw):
    return [StepRecord(step=i, loss=loss, **kw) for i, loss in enumerate(losses)]


def tensor(name="input0", dtype="float32", **kw) -> TensorSummary:
    return TensorSummary(name=name, shape=kw.pop("shape", [8, 4]), dtype=dtype, **kw)


def failing(precision="32-true", losses=(1.0,), **event) -> RunTrace:
    event.setdefault("step", len(losses) - 1)
    event.setdefault("reproduced", True)
    return RunTrace(precision=precision, status="nonfinite", steps=steps(list(losses)),
                    first_nonfinite=NonfiniteEvent(precision=precision, **event))


def clean(precision="32-true", n=3, **kw) -> RunTrace:
    return RunTrace(precision=precision, steps=steps([1.0] * n), **kw)


def ids(findings) -> list[str]:
    return [f.id for f in findings]


def top(trace: Trace):
    findings = diagnose(trace)
    assert findings, "a failed run always has a finding"
    return findings[0]


# --- origin events: one owner each ---------------------------------------------------------

def test_unstable_op_names_the_pole_and_its_fix():
    run = failing(phase="forward", kind="inf", op="aten.log.default", user_source=LINE, surfaced_in="loss",
                  inputs=[tensor(min=0.0, max=3.0, zeros=5)])
    finding = top(trace_of(run))
    assert (finding.id, finding.mechanism) == ("unstable-op", "pole")
    assert "5 zeros" in " ".join(finding.evidence) and "model.py:14" in finding.fix and "clamp_min" in finding.fix


def test_an_exp_of_a_difference_that_overflows_is_told_to_clamp_the_difference_not_subtract_the_max():
    # PPO's ratio exp(logp - logp_old) with logp_old ~ -120: subtracting the max would change the ratio
    run = failing(phase="loss", kind="inf", op="aten.exp.default", user_source=LINE,
                  inputs=[tensor(min=-2.0, max=117.0)], producer=OpRef(op="aten.sub.Tensor", module="", source=LINE))
    finding = top(trace_of(run))
    assert finding.id == "unstable-op" and ".clamp(-20, 20)" in finding.fix and "amax" not in finding.fix


def test_unstable_op_reports_the_public_call_with_the_aten_op_as_detail():
    run = failing(phase="loss", kind="nan", op="aten.scalar_tensor.default", call="torch.logdet", user_source=LINE,
                  inputs=[TensorSummary(name="scalar", shape=[], dtype="float", value=float("nan"))])
    finding = top(trace_of(run))
    assert finding.id == "unstable-op" and finding.mechanism == "domain"
    assert "logdet" in finding.title and "aten op aten.scalar_tensor.default" in finding.evidence[0]
    assert "torch.eye" in finding.fix


def test_unstable_op_names_the_op_that_made_a_nan_passed_as_a_python_number():
    maker = OpRef(op="aten.div.Tensor", module="", source=SourceLocation("model.py", 27))
    run = failing(phase="loss", kind="nan", op="aten.mul.Tensor", user_source=LINE, scalar_source=maker,
                  inputs=[tensor(min=0.1, max=2.0), TensorSummary(name="alpha", shape=[], dtype="float", value=float("nan"))])
    finding = top(trace_of(run))
    assert finding.id == "unstable-op" and "model.py:27" in " ".join(finding.evidence) and "model.py:27" in finding.fix


def test_unstable_op_is_silent_on_a_masked_input():
    run = failing(phase="loss", kind="nan", op="aten.mul.Tensor", masked_input=True,
                  inputs=[tensor(min=0.0, max=0.6, zeros=53), tensor("input1", min=-4.0, max=-1.0, inf=53)])
    assert "unstable-op" not in ids(diagnose(trace_of(run)))


def test_masked_inf_names_the_consumer_and_where_the_mask_was_set():
    mask = OpRef(op="aten.index_put_.default", module="", source=SourceLocation("model.py", 16))
    run = failing(phase="loss", kind="nan", op="aten.mul.Tensor", user_source=LINE, mask_source=mask,
                  inputs=[tensor(min=0.0, max=0.6, zeros=53), tensor("input1", min=-4.0, max=-1.0, inf=53)])
    finding = top(trace_of(run))
    assert (finding.id, finding.mechanism, finding.severity) == ("masked-inf", "mask", "error")
    text = " ".join(finding.evidence)
    assert "0 * -inf" in text and "53 deliberate infinities" in text and "model.py:16" in text
    assert "torch.where(mask, 0.0" in finding.fix


def test_masked_softmax_keeps_the_all_masked_softmax_row():
    run = failing(phase="forward", kind="nan", op="aten._softmax.default", masked_input=True, module="attn",
                  inputs=[tensor(min=-1.0, max=2.0, inf=8)])
    finding = top(trace_of(run))
    assert finding.id == "masked-softmax" and "finfo" in finding.fix
    assert "masked-inf" not in ids(diagnose(trace_of(run)))


def test_masked_softmax_is_silent_without_a_mask():
    run = failing(phase="forward", kind="inf", op="aten.log.default", inputs=[tensor(min=0.0, zeros=1)])
    assert "masked-softmax" not in ids(diagnose(trace_of(run)))


def test_where_trap_is_a_gradient_singularity_with_the_double_where_fix():
    code = SourceLocation("model.py", 15, "loss_fn", "out = torch.where(x > 0, torch.log(x), 0.0)")
    guard = OpRef(op="aten.where.self", module="", source=code)
    run = failing(losses=(2.3,), phase="forward", kind="inf", op="aten.log.default", user_source=code,
                  surfaced_in="gradients", dropped_by=guard, inputs=[tensor(min=0.0, max=6.0, zeros=50)])
    finding = top(trace_of(run))
    assert finding.id == "grad-singularity" and "unselected" in finding.title
    assert "safe = torch.where" in finding.fix and "loss stayed finite" in finding.evidence[0]
    assert "aten.where.self" in " ".join(finding.evidence)


def test_a_loss_that_skips_an_inf_log_probability_is_no_where_trap():
    """Regression (issue 9): `scan nll_classifier.py --steps 2 -p fp32` topped with grad-singularity.
    log(softmax) made -inf, nll_loss picked other classes so the loss stayed finite and the NaN
    surfaced in the gradients; without a guard (torch.where, masked_fill) dropping the -inf, the
    log of a softmax that underflowed is the unstable op."""
    code = SourceLocation("model.py", 28, "loss_fn", "log_probs = torch.log(torch.softmax(logits, dim=-1))")
    softmax = OpRef(op="aten._softmax.default", module="", source=code)
    picked = OpRef(op="aten.nll_loss_forward.default", module="", source=SourceLocation("model.py", 29))
    for dropped_by in (picked, None):
        run = failing(losses=(32.1,), phase="loss", kind="inf", op="aten.log.default", user_source=code,
                      surfaced_in="gradients", producer=softmax, dropped_by=dropped_by,
                      inputs=[tensor(shape=[64, 20], min=0.0, max=1.0, zeros=1)])
        findings = diagnose(trace_of(run))
        assert findings[0].id == "unstable-op" and "log_softmax" in findings[0].fix
        assert "grad-singularity" not in ids(findings)


def test_a_clamp_that_hides_an_inf_in_forward_is_a_gradient_trap_named_after_the_clamp():
    code = SourceLocation("model.py", 20, "loss_fn", "logp = torch.log(p).clamp(min=-100)")
    run = failing(losses=(0.7,), phase="loss", kind="inf", op="aten.log.default", user_source=code,
                  surfaced_in="gradients", dropped_by=OpRef(op="aten.clamp.default", module="", source=code),
                  inputs=[tensor(min=0.0, max=1.0, zeros=3)])
    finding = top(trace_of(run))
    assert finding.id == "grad-singularity" and "clamp" in finding.title and "clamp" in finding.fix


def test_grad_singularity_in_backward_and_silent_when_the_loss_itself_is_inf():
    backward = failing(phase="backward", kind="nan", op="aten.div.Tensor", forward_op="sqrt", user_source=LINE,
                       inputs=[tensor(min=0.0, zeros=4)])
    assert top(trace_of(backward)).id == "grad-singularity"
    loss_inf = failing(losses=(float("inf"),), phase="loss", kind="inf", op="aten.log.default", surfaced_in="loss",
                       inputs=[tensor(min=0.0, zeros=4)])
    assert "grad-singularity" not in ids(diagnose(trace_of(loss_inf)))


def test_empty_reduction_fires_on_zero_elements_and_not_on_a_full_mean():
    empty = failing(phase="loss", kind="nan", op="aten.mean.default", inputs=[tensor(shape=[0])])
    finding = top(trace_of(empty))
    assert finding.id == "empty-reduction" and "[0]" in " ".join(finding.evidence)
    full = failing(phase="loss", kind="inf", op="aten.mean.default", inputs=[tensor(min=1.0, max=3e38)])
    assert "empty-reduction" not in ids(diagnose(trace_of(full)))


def zero(name: str, dtype: str) -> TensorSummary:
    return TensorSummary(name=name, shape=[], dtype=dtype, min=0.0, max=0.0, min_abs=0.0, zeros=1)


def test_a_zero_sum_over_a_zero_count_is_an_empty_reduction_and_other_zero_ratios_are_unstable():
    """0/0 of a hand-written mean (a float sum over an integer count) is a mean over nothing; a
    fraction of two counts or a ratio of two float statistics (IoU) is the division's own 0/0."""
    mean = failing(phase="loss", kind="nan", op="aten.div.Tensor", user_source=LINE,
                   inputs=[zero("input0", "float32"), zero("input1", "int64")])
    finding = top(trace_of(mean))
    assert finding.id == "empty-reduction" and "count of 0" in " ".join(finding.evidence)
    by_len = failing(phase="loss", kind="nan", op="aten.div.Tensor", user_source=LINE,
                     inputs=[zero("input0", "float32"), TensorSummary(name="scalar", shape=[], dtype="int", value=0.0)])
    assert top(trace_of(by_len)).id == "empty-reduction"
    for num_dtype, den_dtype in (("int64", "int64"), ("float32", "float32")):
        ratio = failing(phase="loss", kind="nan", op="aten.div.Tensor", user_source=LINE,
                        inputs=[zero("input0", num_dtype), zero("input1", den_dtype)])
        finding = top(trace_of(ratio))
        assert (finding.id, finding.mechanism) == ("unstable-op", "indeterminate"), (num_dtype, finding.id)
        assert "0 / 0" in " ".join(finding.evidence) and "clamp_min" in finding.fix


def test_a_zero_dim_ratio_converted_to_a_python_number_is_explained_by_its_own_inputs():
    """The origin is the 0-dim div whose NaN left autograd through `.item()` (scalar_source names
    it): the mechanism is its 0/0, not 'a NaN arrived as a number'."""
    div = OpRef(op="aten.div.Tensor", module="", source=LINE)
    run = failing(phase="loss", kind="nan", op="aten.div.Tensor", user_source=LINE, scalar_source=div,
                  inputs=[zero("input0", "float32"), zero("input1", "float32")])
    finding = top(trace_of(run))
    assert (finding.id, finding.mechanism) == ("unstable-op", "indeterminate")
    text = " ".join(finding.evidence)
    assert "0 / 0" in text and "Python number" in text and "denominator" in finding.fix


def test_fp16_overflow_when_only_the_16bit_precision_was_scanned_plans_a_float32_step():
    run = failing("16-true", losses=(float("inf"),), phase="loss", kind="inf", op="aten.sum.default",
                  user_source=LINE, surfaced_in="loss", inputs=[tensor(dtype="float16", min=0.0, max=251.5)])
    trace = trace_of(run)
    findings = diagnose(trace)
    assert findings[0].id == "fp16-overflow" and findings[0].severity == "error" and verdict(findings) == "fail"
    assert "only 16-true was scanned" in " ".join(findings[0].evidence)
    assert ("step-fp32", "16-true") in {(r.id, r.precision) for r in plan_experiments(trace, findings)}


def test_fp16_overflow_born_in_a_cast_says_to_keep_the_value_in_float32():
    # rotary positions 65480..65527 cast with `type_as` of a float16 buffer: the cast itself makes the inf
    run = failing("16-true", phase="forward", kind="inf", op="aten._to_copy.default", call="torch.Tensor.type_as",
                  module="rope", user_source=LINE, inputs=[tensor(dtype="int64", min=65480.0, max=65527.0)],
                  output=tensor(name="output", dtype="float16", max=65504.0, inf=8))
    finding = top(trace_of(clean("32-true"), run))
    assert finding.id == "fp16-overflow" and "keep it in float32" in finding.fix and ".type_as(x)" in finding.fix


def test_fp16_overflow_is_not_a_division_fix_and_is_silent_when_float32_fails_too():
    run16 = failing("16-mixed", phase="forward", kind="inf", op="aten.mm.default", module="ff.wo",
                    inputs=[tensor(dtype="float16", min=0.0, max=12480.0, zeros=541)])
    finding = top(trace_of(clean("32-true"), run16))
    assert finding.id == "fp16-overflow" and "eps" not in finding.fix and "bf16-mixed" in finding.fix
    both = failing("32-true", phase="forward", kind="inf", op="aten.mm.default")
    assert "fp16-overflow" not in [f.id for f in diagnose(trace_of(both, run16)) if f.severity == "error"]


def test_bf16_precision_when_float32_ran_the_step_finite():
    run = failing("bf16-true", phase="forward", kind="nan", op="aten.sqrt.default", module="norm", user_source=LINE,
                  inputs=[tensor(dtype="bfloat16", min=-0.5, max=0.5, negatives=2)])
    finding = top(trace_of(clean("32-true"), run))
    assert finding.id == "bf16-precision" and "32-true ran step 0 finite" in " ".join(finding.evidence)
    assert "float32" in finding.fix
    fp32_fails = failing("32-true", phase="forward", kind="nan", op="aten.sqrt.default",
                         inputs=[tensor(min=-0.5, max=0.5, negatives=2)])
    assert "bf16-precision" not in ids(diagnose(trace_of(fp32_fails, run)))


def test_bf16_rounding_onto_a_pole_names_the_pole_and_the_unrepresentable_guard():
    # log1p(-p) with p rounded to 1.0: the input is exactly -1 (log1p's pole), made by a negation, not a cancellation
    run = failing("bf16-mixed", phase="loss", kind="inf", op="aten.log1p.default", user_source=LINE,
                  inputs=[tensor(dtype="bfloat16", min=-1.0, max=-1e-6, negatives=32)],
                  producer=OpRef(op="aten.neg.default", module="", source=LINE))
    finding = top(trace_of(clean("32-true"), run))
    assert finding.id == "bf16-precision" and "pole" in finding.title
    assert "log1p at -1" in " ".join(finding.evidence) and "2**-8" in finding.fix and "E[x²]" not in finding.fix
    # log1p of values in (-1, 0) is no domain error: a NaN there is not called "log1p of a negative"
    inside = failing("32-true", phase="loss", kind="nan", op="aten.log1p.default", user_source=LINE,
                     inputs=[tensor(min=-0.5, max=0.5, negatives=3)])
    assert "of a negative" not in " ".join(top(trace_of(inside)).evidence)


def test_fp16_underflow_from_a_reference_float32_run_names_layers_and_shares():
    def params(zero_share, dtype):
        return [ParamSeries(name="dec.weight", module="dec", shape=[4, 4], dtype=dtype,
                            series={"grad_zero_frac": [zero_share, zero_share]}),
                ParamSeries(name="enc.weight", module="enc", shape=[4, 4], dtype=dtype,
                            series={"grad_zero_frac": [1.0, 1.0]})]
    run16 = clean("16-true", params=params(0.45, "float16"))
    reference = clean("32-true", params=params(0.0, "float32"))
    findings = diagnose(trace_of(run16, reference=[reference]))
    assert ids(findings) == ["fp16-underflow"] and verdict(findings) == "warn"
    text = " ".join(findings[0].evidence)
    assert "dec.weight: 45% zero gradient elements in 16-true vs 0%" in text and "enc.weight" not in text
    same = clean("16-true", params=params(0.0, "float16"))
    assert diagnose(trace_of(same, reference=[reference])) == []


def test_fp16_underflow_ignores_a_gradient_that_is_round_off_around_zero_in_float32():
    """A bias a shift-invariant loss cannot see has a float32 gradient of ~1e-9 (round-off);
    float16 flushing it to exactly zero loses nothing, so it is no finding."""
    def params(zero_share, dtype, bias_norm):
        return [ParamSeries(name="embed.weight", module="embed", shape=[4, 4], dtype=dtype,
                            series={"grad_zero_frac": [0.0, 0.0], "grad_norm": [0.6, 0.6]}),
                ParamSeries(name="embed.bias", module="embed", shape=[4], dtype=dtype,
                            series={"grad_zero_frac": [zero_share, zero_share], "grad_norm": [bias_norm, bias_norm]})]
    run16 = clean("16-true", params=params(1.0, "float16", 0.0))
    assert diagnose(trace_of(run16, reference=[clean("32-true", params=params(0.0, "float32", 9e-9))])) == []
    real = diagnose(trace_of(run16, reference=[clean("32-true", params=params(0.0, "float32", 0.05))]))
    assert ids(real) == ["fp16-underflow"]


def test_fp16_underflow_of_a_small_epsilon():
    run = failing("16-true", phase="forward", kind="nan", op="aten.div.Tensor", user_source=LINE,
                  inputs=[tensor(dtype="float16", zeros=3), tensor("input1", dtype="float16", zeros=1)])
    assert top(trace_of(clean("32-true"), run)).id == "fp16-underflow"


def test_an_epsilon_that_vanishes_in_float16_before_any_pole_is_fp16_underflow():
    """`log(x + 1e-8)` (poisson_nll_loss's eps) in float16: the log's zeros exist only there."""
    def log_run(precision, dtype):
        run = failing(precision, phase="loss", kind="inf", op="aten.log.default", user_source=LINE,
                      inputs=[tensor(dtype=dtype, zeros=669, min=0.0)])
        run.first_nonfinite.call = "torch.nn.functional.poisson_nll_loss"
        return run
    finding = top(trace_of(clean("32-true"), log_run("16-true", "float16")))
    assert finding.id == "fp16-underflow" and "poisson_nll_loss" in finding.fix and "eps=1e-4" in finding.fix
    # The same log failing in float32 too is the op's own pole, not float16's.
    assert top(trace_of(log_run("32-true", "float32"), log_run("16-true", "float16"))).id == "unstable-op"


def test_optimizer_eps_fix_names_the_line_that_builds_the_optimizer_not_its_step():
    """Regression (bench round 5, accelerate's local_sgd.py with `AdamW(..., eps=0.0)`): the fix read
    "pass `eps=1e-8` to the optimizer at local_sgd.py:183", the line of optimizer.step()."""
    step_line = SourceLocation("local_sgd.py", 183, "training_function", "optimizer.step()")
    built = SourceLocation("local_sgd.py", 151, "training_function", "optimizer = AdamW(params=model.parameters(), lr=lr)")
    run = failing(phase="optimizer", kind="nan", op="aten.addcdiv_.default", parameter="embed.weight",
                  user_source=step_line, inputs=[tensor(), tensor("input1", zeros=216), tensor("input2", zeros=216)])
    run.optimizer = {"name": "AdamW", "lr": 2e-5, "eps": 0.0}
    trace = trace_of(run)
    trace.loop = LoopFacts(optimizer_step=step_line, optimizer_built=built, argv=["--cpu"])
    finding = top(trace)
    assert finding.id == "optimizer-eps" and "at local_sgd.py:151" in finding.fix, finding.fix
    assert finding.source.line == 183          # where the NaN was born stays the finding's place
    assert "AdamW eps=0: nothing keeps" in " ".join(finding.evidence)


def test_optimizer_eps_of_zero_in_float32_and_a_hand_written_division():
    adam = failing(phase="optimizer", kind="nan", op="aten.addcdiv_.default", parameter="embed.weight",
                   inputs=[tensor(), tensor("input1", zeros=216), tensor("input2", zeros=216)])
    adam.optimizer = {"name": "Adam", "lr": 1e-3, "eps": 0.0}
    finding = top(trace_of(adam))
    assert finding.id == "optimizer-eps" and "eps=0" in " ".join(finding.evidence) and "eps=1e-8" in finding.fix
    manual = failing(phase="optimizer", kind="nan", op="aten.div.Tensor", user_source=LINE,
                     inputs=[tensor(zeros=32, min=0.0, max=0.0), tensor("input1", shape=[], zeros=1)])
    manual.optimizer = {"name": "NormalizedSGD", "lr": 0.01}
    finding = top(trace_of(manual))
    assert finding.id == "optimizer-eps" and "1e-8" in finding.fix and "model.py:14" in finding.fix
    assert "optimizer-eps" not in ids(diagnose(trace_of(clean(optimizer={"name": "Adam", "eps": 1e-8}))))


def test_adam_eps_below_float16_range_warns_only_when_the_update_runs_in_float16():
    """Regression (bench round 3, run_clm.py --dtype float16): the Trainer's fused AdamW adds
    eps in float32, so 1e-8 is not 0 there; a foreach/for-loop Adam on float16 weights adds it
    in float16, where it rounds to 0."""
    plain = clean("16-true", param_dtype="float16", optimizer={"name": "AdamW", "eps": 1e-8})
    assert "optimizer-eps" in ids(diagnose(trace_of(plain)))
    fused = clean("16-true", param_dtype="float16", optimizer={"name": "AdamW", "eps": 1e-8, "fused": True})
    assert "optimizer-eps" not in ids(diagnose(trace_of(fused)))
    zero = clean("16-true", param_dtype="float16", optimizer={"name": "AdamW", "eps": 0.0, "fused": True})
    assert "optimizer-eps" in ids(diagnose(trace_of(zero)))


def test_poisoned_optimizer_state_and_silent_on_finite_state():
    run = failing(phase="optimizer", kind="nan", op="aten.addcdiv_.default", parameter="fc.weight", state="exp_avg_sq",
                  inputs=[tensor(nan=4)])
    assert top(trace_of(run)).id == "poisoned-optimizer-state"
    healthy = failing(phase="optimizer", kind="nan", op="aten.addcdiv_.default", inputs=[tensor()])
    assert "poisoned-optimizer-state" not in ids(diagnose(trace_of(healthy)))


def test_infinite_learning_rate_from_a_schedule_is_high_lr():
    run = failing(phase="optimizer", kind="nan", detail="no single op")
    run.optimizer = {"name": "SGD", "lr": float("inf")}
    finding = top(trace_of(run))
    assert finding.id == "high-lr" and "Inf" in finding.title and "max(step, 1)" in finding.fix


def test_exploding_activations_are_reported_even_when_the_replay_stayed_finite():
    layer = LayerSeries(module="rnn", type="RNN", index=1, source=SourceLocation("model.py", 10, "", "self.rnn = nn.RNN(4, 32)"),
                        series={"act_max_abs": [3.4e12]})
    run = failing(losses=(2.1e23,), phase="optimizer", kind="nan", reproduced=False, detail="stayed finite")
    run.layers = [layer]
    findings = diagnose(trace_of(run))
    assert findings[0].id == "exploding-activations" and findings[0].severity == "error"
    assert "3.40e12" in findings[0].evidence[0] and "orthogonal_" in findings[0].fix
    assert "nonreproducible" in ids(findings) and verdict(findings) == "fail"
    calm = clean(layers=[LayerSeries(module="fc", type="Linear", index=1, series={"act_max_abs": [3.0, 4.0]})])
    assert "exploding-activations" not in ids(diagnose(trace_of(calm)))


def test_nonreproducible_only_when_the_replays_stayed_finite():
    gone = failing(phase="backward", kind="nan", reproduced=False, replay_untraced=False, replay_traced=False)
    assert "nonreproducible" in ids(diagnose(trace_of(gone)))
    back = failing(phase="backward", kind="nan", op="aten.div.Tensor", forward_op="sqrt", reproduced=True)
    assert "nonreproducible" not in ids(diagnose(trace_of(back)))


def test_unexplained_nonfinite_carries_the_origin_and_is_silent_when_a_rule_explains_it():
    run = failing(phase="forward", kind="inf", op="aten.nextafter.default", user_source=LINE,
                  inputs=[tensor(min=1.0, max=2.0)])
    finding = top(trace_of(run))
    assert finding.id == "unexplained-nonfinite" and "aten.nextafter.default" in finding.evidence[0]
    explained = failing(phase="forward", kind="inf", op="aten.log.default", inputs=[tensor(min=0.0, zeros=1)])
    assert "unexplained-nonfinite" not in ids(diagnose(trace_of(explained)))


# --- data, labels, errors ------------------------------------------------------------------

def test_data_nonfinite_and_silent_on_clean_batches():
    run = failing(phase="data", kind="nan", tensor="inputs", count=3, detail="inputs: 3 NaN")
    assert top(trace_of(run)).id == "data-nonfinite"
    assert "data-nonfinite" not in ids(diagnose(trace_of(clean())))


def test_data_scale_is_silent_on_normalised_batches():
    records = steps([1.0, 0.9])
    for r in records:
        r.batch = [BatchTensorStats(name="inputs", dtype="float32", shape=[4, 2], numel=8, max_abs=3.0)]
    assert diagnose(trace_of(RunTrace(precision="32-true", steps=records))) == []


def test_label_range_fires_on_out_of_range_targets_only():
    records = steps([1.0])
    records[0].labels = LabelCheck(tensor="targets", num_classes=10, min=1, max=10, out_of_range=3, total=16)
    run = RunTrace(precision="32-true", status="error", steps=records,
                   error=UserError(phase="loss", exc_type="LabelOutOfRange", message="target 10", category="label-guard"))
    finding = top(trace_of(run))
    assert finding.id == "label-range" and "targets - 1" in finding.fix
    ok = steps([1.0])
    ok[0].labels = LabelCheck(tensor="targets", num_classes=10, min=0, max=9, out_of_range=0, total=16)
    assert diagnose(trace_of(RunTrace(precision="32-true", steps=ok))) == []


def test_user_error_at_the_users_line_and_silent_for_a_label_guard():
    err = UserError(phase="forward", exc_type="IndexError", message="index 8 is out of bounds", user_source=LINE)
    finding = top(trace_of(RunTrace(precision="32-true", status="error", steps=[], error=err)))
    assert finding.id == "user-error" and finding.source == LINE and finding.severity == "error"
    guard = UserError(phase="loss", exc_type="LabelOutOfRange", message="x", category="label-guard")
    assert "user-error" not in ids(diagnose(trace_of(RunTrace(precision="32-true", status="error", error=guard))))


def test_user_error_for_a_constant_that_does_not_fit_float16_fixes_the_mask_value():
    err = UserError(phase="forward", exc_type="RuntimeError", user_source=LINE,
                    message="value cannot be converted to type c10::Half without overflow")
    finding = top(trace_of(clean("32-true"), RunTrace(precision="16-mixed", status="error", steps=[], error=err)))
    assert finding.id == "user-error" and "torch.finfo(x.dtype).min" in finding.fix and "16-mixed" in finding.fix
    zero = UserError(phase="init", exc_type="ZeroDivisionError", message="division by zero", user_source=LINE)
    finding = top(trace_of(RunTrace(precision="32-true", status="error", steps=[], error=zero)))
    assert finding.id == "user-error" and "max(1, n)" in finding.fix


def test_scan_incomplete_and_silent_on_complete_runs():
    stopped = RunTrace(precision="bf16-mixed", status="timeout", note="budget", stopped_by="time-budget")
    assert ids(diagnose(trace_of(clean(), stopped))) == ["scan-incomplete"]
    assert diagnose(trace_of(clean())) == []


def test_scan_incomplete_severity_follows_what_was_left_undone():
    from nandoctor.diagnose import verdict
    unsupported = RunTrace(precision="16-mixed", status="unsupported", note="no fp16 LSTM on this CPU")
    stopped = RunTrace(precision="bf16-mixed", status="timeout", note="budget", stopped_by="time-budget")
    alongside = diagnose(trace_of(clean(), unsupported))
    assert [(f.id, f.severity) for f in alongside] == [("scan-incomplete", "info")] and verdict(alongside) == "pass"
    assert "-p 32-true" in alongside[0].fix
    assert [f.severity for f in diagnose(trace_of(clean(), stopped))] == ["warning"]
    # Nothing ran at all: the gate checked nothing, so it must not pass.
    for runs in ([unsupported], [stopped], [unsupported, stopped]):
        findings = diagnose(trace_of(*runs))
        assert [(f.id, f.severity) for f in findings] == [("scan-incomplete", "error")], runs
        assert "nothing was scanned" in findings[0].title and verdict(findings) == "fail"


# --- training dynamics ---------------------------------------------------------------------

def _diverging(event_phase="backward"):
    layer = LayerSeries(module="fc", type="Linear", index=1,
                        series={"update_ratio": [0.02, 0.9, 3.0], "param_grad_norm": [1.0, 50.0, 5e4],
                                "act_max_abs": [1, 10, 100], "param_norm": [1, 2, 8]})
    records = steps([1.0, 30.0, 900.0])
    for r, g in zip(records, (1.0, 50.0, 5e4)):
        r.grad_norm = g
    return RunTrace(precision="32-true", status="nonfinite", steps=records, layers=[layer],
                    optimizer={"name": "SGD", "lr": 2.0},
                    first_nonfinite=NonfiniteEvent(precision="32-true", step=3, phase=event_phase, kind="inf",
                                                   op="aten.mm.default", module="fc", reproduced=True))


def test_a_confirmed_high_lr_outranks_the_exploding_gradients_it_causes():
    confirm = ExperimentResult(id="lower-lr", label="lr 2 -> 0.2", precision="32-true", steps_run=3, outcome="finite")
    findings = diagnose(trace_of(_diverging(), experiments=[confirm]))
    assert ids(findings)[:2] == ["high-lr", "exploding-gradients"]
    assert "confirmed" in findings[0].rank_reason and "symptom" in findings[1].rank_reason


def test_a_confirmed_lr_far_above_the_optimizers_usual_range_is_not_proposed_alone():
    # Adam at lr 1e5 re-trained finite at lr 1 for a few steps: 1 is still no Adam setting.
    run = _diverging()
    run.optimizer = {"name": "AdamW", "lr": 1e5}
    confirm = ExperimentResult(id="lower-lr", label="lr 1e5 -> 1", precision="32-true", steps_run=3,
                               outcome="finite", change={"lr_scale": 1e-5})
    fix = next(f for f in diagnose(trace_of(run, experiments=[confirm])) if f.id == "high-lr").fix
    assert "1e+00 (re-trained with it" in fix and "AdamW's usual range (1e-05 to 1e-02)" in fix
    assert "start from 1e-02" in fix
    # SGD at 2 confirmed at 0.2: within SGD's usual range, the confirmed value alone.
    sgd = next(f for f in diagnose(trace_of(_diverging(), experiments=[
        ExperimentResult(id="lower-lr", label="lr 2 -> 0.2", precision="32-true", steps_run=3, outcome="finite",
                         change={"lr_scale": 0.1})])) if f.id == "high-lr").fix
    assert "2e-01 (re-trained with it, the run stayed finite)" in sgd and "usual range" not in sgd


def test_exploding_gradients_fires_on_growth_and_not_on_a_flat_norm():
    assert "exploding-gradients" in ids(diagnose(trace_of(_diverging())))
    flat = steps([1.0] * 4)
    for r in flat:
        r.grad_norm = 1.0
    assert "exploding-gradients" not in ids(diagnose(trace_of(RunTrace(precision="32-true", steps=flat))))


def test_high_lr_is_silent_with_small_updates():
    layer = LayerSeries(module="fc", type="Linear", index=1, series={"update_ratio": [1e-3, 1e-3]})
    assert "high-lr" not in ids(diagnose(trace_of(clean(layers=[layer]))))


def test_bad_init_for_a_non_finite_parameter_and_not_for_a_float16_only_failure():
    params = [ParamSeries(name="w", module="", shape=[1], dtype="float32", init_source=LINE)]
    run = failing(phase="init", kind="inf", parameter="w", detail="w: 1 Inf before step 0")
    run.params = params
    assert top(trace_of(run)).id == "bad-init"
    wide = [ParamSeries(name="ff.wo.weight", module="ff.wo", shape=[32, 128], dtype="float32", numel=4096,
                        init_norm=64.0 * 30, init_max_abs=3.0)]
    fp32 = clean("32-true", params=wide, layers=[LayerSeries(module="ff.wo", type="Linear", index=1)])
    fp16 = failing("16-mixed", phase="forward", kind="inf", op="aten.mm.default", module="ff.wo",
                   inputs=[tensor(dtype="float16", max=12480.0)])
    fp16.params = wide
    findings = diagnose(trace_of(fp32, fp16))
    assert findings[0].id == "fp16-overflow"
    assert all(f.severity != "error" for f in findings if f.id == "bad-init")


def test_vanishing_gradients_is_silent_on_balanced_layers():
    layers = [LayerSeries(module=f"l{i}", type="Linear", index=i, series={"param_grad_norm": [0.1] * 4}) for i in range(3)]
    assert diagnose(trace_of(clean(n=4, layers=layers))) == []


def test_loss_scale_collapse_is_silent_with_a_recovering_scaler():
    records = steps([1.0] * 8)
    records[0].skipped = True
    assert "loss-scale-collapse" not in ids(diagnose(trace_of(RunTrace(precision="16-mixed", steps=records))))


# --- checkpoints ---------------------------------------------------------------------------

def checkpoint(tensors=(), optimizer=(), scaler=None) -> PostmortemTrace:
    return PostmortemTrace(path="ckpt.pt", format="torch", tensors=list(tensors), optimizer=list(optimizer),
                           scaler=scaler)


def test_checkpoint_rules_fire_and_stay_silent():
    bad = TensorRecord(name="fc.weight", module="fc", shape=[4], dtype="float32", numel=4, nan=4)
    huge = TensorRecord(name="head.weight", module="head", shape=[4], dtype="float32", numel=4, max_abs=3.2e6, norm=4e6)
    state = OptimizerRecord(param="0", key="exp_avg_sq", shape=[4], nan=2)
    found = {f.id for f in diagnose_checkpoint(checkpoint([bad, huge], [state], {"scale": 2.0 ** -10}))}
    assert found == {"param-nonfinite", "weight-blowup", "poisoned-optimizer-state", "loss-scale-collapse"}
    fine = TensorRecord(name="fc.weight", module="fc", shape=[4], dtype="float32", numel=4, max_abs=0.5, norm=1.0)
    assert diagnose_checkpoint(checkpoint([fine], [OptimizerRecord(param="0", key="exp_avg", shape=[4])],
                                          {"scale": 65536.0})) == []


@pytest.mark.parametrize("cause", rule_ids())
def test_every_cause_documents_itself_with_its_thresholds(cause):
    text = explain(cause)
    for heading in ("What it detects:", "Why it produces NaN or Inf:", "Evidence used:", "How to fix:", "Example:",
                    "Thresholds:"):
        assert heading in text, (cause, heading)


def test_high_lr_reads_a_loss_spike_that_settles_and_quotes_the_peak_lr():
    """A OneCycle peak that blows the loss up to 1e9 and then leaves dead ReLUs on a plateau:
    the run ends near its start loss, yet it diverged, at the schedule's peak lr."""
    layer = LayerSeries(module="fc", type="Linear", index=1, series={"update_ratio": [0.01, 5.0, 0.0, 0.0]})
    records = steps([2.3, 8e9, 2.4, 2.4])
    for r, lr in zip(records, (0.3, 8.0, 1.0, 0.01)):
        r.lr = lr
    run = RunTrace(precision="32-true", status="ok", steps=records, layers=[layer], optimizer={"name": "SGD", "lr": 0.3})
    finding = next(f for f in diagnose(trace_of(run)) if f.id == "high-lr")
    assert "8 is too high" in finding.title and any("2.3 to 8.00e9" in e for e in finding.evidence), finding
    calm = RunTrace(precision="32-true", status="ok", steps=steps([2.3, 2.2, 2.1, 2.0]), layers=[layer],
                    optimizer={"name": "SGD", "lr": 0.3})
    assert "high-lr" not in ids(diagnose(trace_of(calm)))
