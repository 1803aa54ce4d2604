"""Findings a senior engineer would sign (issue 19): the root cause leads across precisions,
symptoms hang under their cause, fixes agree with the report's own experiments, the optimizer's
ops are classified like any other, the origin search goes past overflowing norms, and a library
frame is never the place to fix. Hand-made traces through `diagnose`, tiny models through the
public API."""
from __future__ import annotations

import textwrap
from pathlib import Path

import nandoctor

# A field of weights that Adam pushes up by a learning rate which jumps to 1e36 at step 3 and
# grows 1.5x a step: the L2 norm of the weights overflows float32 at step 3 while every value is
# finite; the first value that really is inf is the update of step 15.
NORM_OVERFLOW = '''
import torch
from torch import nn


class Field(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1000))

    def forward(self, x):
        return self.w * x


def build_model():
    return Field()


def get_batch(step):
    return torch.full((1000,), 1e-15), torch.zeros(1000)


def loss_fn(outputs, targets):
    return -outputs.mean()


def build_optimizer(params):
    return torch.optim.Adam(params, lr=1.0, eps=1e-30)


def build_scheduler(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1e36 * 1.5 ** (step - 3) if step >= 3 else 1.0)
'''


def write(tmp_path: Path, text: str, name: str = "model.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_origin_search_goes_past_an_overflowing_norm_to_the_first_infinite_value(tmp_path):
    doc = nandoctor.scan(write(tmp_path, NORM_OVERFLOW), precisions=["32-true"], steps=20, experiments=False).to_dict()
    event = doc["first_nonfinite"]
    assert doc["runs"][0]["steps_run"] == 4           # the recorded run stops at the overflowing norm
    assert event["step"] == 15 and event["phase"] == "optimizer", event
    assert event["op"] == "aten.addcdiv_.default" and "born at step 15" in event["detail"]


HANDWRITTEN_ADAMW = '''
import torch
from torch import nn


class AdamW(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = m / (1 - beta1 ** state["step"])
                v_hat = v / (1 - beta2 ** state["step"])
                p.add_(-group["lr"] * m_hat / (v_hat.sqrt() + group["eps"]))
                state["step"] += 1


def build_model():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


def get_batch(step):
    x = torch.randn(16, 8)
    return x, x.sum(dim=1, keepdim=True)


def build_optimizer(params):
    return AdamW(params, lr=1e-3)
'''


def test_a_division_by_a_zero_bias_correction_in_the_optimizer_is_an_unstable_op(tmp_path):
    doc = nandoctor.scan(write(tmp_path, HANDWRITTEN_ADAMW), precisions=["32-true"], steps=3, experiments=True).to_dict()
    top = doc["causes"][0]
    assert top["id"] == "unstable-op" and top["mechanism"] == "pole" and "optimizer" in top["title"], top
    assert "1 - beta ** step" in top["fix"] and "count steps from 1" in top["fix"]
    # eps 1e-8 is not 0 in float32: nothing may say it is.
    assert not any(c["id"] == "optimizer-eps" for c in doc["causes"]), [c["title"] for c in doc["causes"]]


NEGATIVE_SCHEDULE = '''
import torch
from torch import nn

TOTAL = 6


def build_model():
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))


def get_batch(step):
    x = torch.randn(64, 8)
    return x, x.sum(dim=1, keepdim=True)


def build_optimizer(params):
    return torch.optim.SGD(params, lr=0.5)


def build_scheduler(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / TOTAL)
'''


def test_a_negative_learning_rate_is_a_schedule_bug_at_the_schedule_line(tmp_path):
    doc = nandoctor.scan(write(tmp_path, NEGATIVE_SCHEDULE), precisions=["32-true"], steps=30, experiments=False).to_dict()
    top = doc["causes"][0]
    assert top["id"] == "high-lr" and "schedule goes negative" in top["title"], top
    assert top["line"] == 22 and "clamp it at 0" in top["fix"]
    assert "lower the learning rate" not in top["fix"]


# ---- item 1: causal ranking across precisions (hand-made traces) ----------------------------------

from nandoctor.diagnose import diagnose  # noqa: E402
from nandoctor.trace import (ExperimentResult, LayerSeries, NonfiniteEvent, RunTrace, SourceLocation,  # noqa: E402
                             StepRecord, TensorSummary, Trace)


def trace_of(*runs: RunTrace, experiments=()) -> Trace:
    return Trace(model_file="m.py", config={"grad_clip": None, "loss_scale": "dynamic", "thresholds": {}},
                 device="cpu", torch_version="x", tool_version="x", runs=list(runs), experiments=list(experiments))


def diverging(precision: str, fails_at: int, op="aten.addmm.default") -> RunTrace:
    """A run whose updates are 10x too large, failing at `fails_at` with an inf out of a matmul."""
    n = fails_at
    layer = LayerSeries(module="fc", type="Linear", index=1,
                        series={"update_ratio": [0.5 * (i + 1) for i in range(n)], "param_grad_norm": [10.0 ** i for i in range(n)],
                                "act_max_abs": [10.0 ** (3 * i) for i in range(n)], "param_norm": [2.0 ** i for i in range(n)]})
    dtype = "float16" if precision.startswith("16") else "float32"
    return RunTrace(precision=precision, status="nonfinite", layers=[layer], optimizer={"name": "SGD", "lr": 10.0},
                    steps=[StepRecord(step=i, loss=10.0 ** i, lr=10.0) for i in range(n)],
                    first_nonfinite=NonfiniteEvent(precision=precision, step=n, phase="forward", kind="inf", op=op,
                                                   module="fc", inputs=[TensorSummary(name="input0", shape=[4, 8], dtype=dtype,
                                                                                      min=-3e4, max=3e4)]))


def test_a_cause_that_breaks_every_precision_leads_over_the_16_bit_one_that_shows_it_first():
    findings = diagnose(trace_of(diverging("32-true", 9), diverging("bf16-mixed", 6), diverging("16-mixed", 5)))
    assert findings[0].id == "high-lr", [(f.id, f.precisions) for f in findings]
    assert set(findings[0].precisions) == {"32-true", "bf16-mixed", "16-mixed"}
    assert not any(f.id in ("fp16-overflow", "bf16-precision") for f in findings), [f.id for f in findings]


def div_event(precision: str, dtype: str, step: int = 3, phase: str = "forward") -> NonfiniteEvent:
    return NonfiniteEvent(precision=precision, step=step, phase=phase, kind="nan", op="aten.div.Tensor", module="head",
                          user_source=SourceLocation("m.py", 20, "forward", "y = logits / tau"),
                          inputs=[TensorSummary(name="input0", shape=[4, 8], dtype=dtype, min=-2.0, max=3.0),
                                  TensorSummary(name="input1", shape=[], dtype=dtype, min=0.0, max=0.0, zeros=1)])


def test_a_failure_only_in_float16_with_float32_finite_is_the_precision_cause_whatever_the_op():
    half = RunTrace(precision="16-true", status="nonfinite", steps=[StepRecord(step=i, loss=1.0) for i in range(3)],
                    first_nonfinite=div_event("16-true", "float16"))
    wide = RunTrace(precision="32-true", steps=[StepRecord(step=i, loss=1.0) for i in range(6)])
    findings = diagnose(trace_of(half, wide))
    assert findings[0].id in ("fp16-underflow", "fp16-overflow"), [f.id for f in findings]
    assert "32-true" in " ".join(findings[0].evidence + [findings[0].title])
    assert not any(f.id == "unstable-op" for f in findings)


def test_a_bf16_only_failure_whose_float64_rerun_is_finite_is_bf16_precision_even_in_backward():
    event = div_event("bf16-true", "bfloat16", phase="backward")
    run = RunTrace(precision="bf16-true", status="nonfinite", steps=[StepRecord(step=i, loss=1.0) for i in range(3)],
                   first_nonfinite=event)
    fp64 = ExperimentResult(id="step-fp64", label="step 3 re-run in float64", precision="bf16-true", steps_run=1,
                            outcome="finite")
    assert diagnose(trace_of(run))[0].id == "grad-singularity"      # nothing wider ran: the op's own edge
    findings = diagnose(trace_of(run, experiments=[fp64]))
    assert findings[0].id == "bf16-precision", [f.id for f in findings]
    assert any("float64" in line for line in findings[0].evidence), findings[0].evidence


# ---- item 2: one root cause, its symptoms nested, one annotation -------------------------------------

def test_one_root_cause_is_one_error_annotation_with_its_symptoms_nested(tmp_path):
    from conftest import run_cli
    path = write(tmp_path, NEGATIVE_SCHEDULE)
    result = run_cli("scan", path, "-p", "32-true", "--steps", "30", "--no-experiments", "--format", "github")
    errors = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    assert len(errors) == 1 and "nandoctor high-lr" in errors[0], result.stdout
    assert "symptom exploding-" in errors[0]
    doc = nandoctor.scan(path, precisions=["32-true"], steps=30, experiments=False).to_dict()
    assert [c["id"] for c in doc["causes"]] == ["high-lr"], [c["id"] for c in doc["causes"]]
    assert {s["id"] for s in doc["causes"][0]["symptoms"]} >= {"exploding-activations"}
    assert all("symptom of the leading cause (high-lr)" in s["rank_reason"] for s in doc["causes"][0]["symptoms"])


def test_a_refuted_or_untested_hypothesis_behind_the_leading_error_is_a_warning_not_a_second_annotation():
    from nandoctor.diagnose.finding import Finding
    from nandoctor.diagnose.ranking import rank
    from nandoctor.diagnose.verdict import verdict
    leader = Finding(id="unstable-op", severity="error", confidence=0.8, title="0/0", explains_origin=True)
    refuted = Finding(id="high-lr", severity="error", confidence=0.6, title="lr", explains_origin=True, confirmed=False)
    other = Finding(id="data-nonfinite", severity="error", confidence=0.9, title="NaN batch", explains_origin=False)
    ordered = rank([refuted, leader, other])
    assert [f.id for f in ordered] == ["unstable-op", "data-nonfinite", "high-lr"]
    assert refuted.severity == "warning" and "refuted" in refuted.rank_reason
    assert leader.severity == other.severity == "error"          # unrefuted causes keep their severity
    assert verdict(ordered, failed=True) == "fail"
    # An untested competing hypothesis behind a leader that explains the origin is a warning too;
    # a confirmed one is a second root cause and stays an error.
    untested = Finding(id="optimizer-eps", severity="error", confidence=0.7, title="eps", explains_origin=True)
    confirmed = Finding(id="high-lr", severity="error", confidence=0.5, title="lr", confirmed=True)
    leader = Finding(id="unstable-op", severity="error", confidence=0.8, title="0/0", explains_origin=True)
    ordered = rank([untested, confirmed, leader])
    assert untested.severity == "warning" and "competing hypothesis" in untested.rank_reason
    assert confirmed.severity == "error"
    # A refuted leader (nothing unrefuted explains the failure) stays an error: the run failed.
    alone = Finding(id="high-lr", severity="error", confidence=0.6, title="lr", confirmed=False)
    assert rank([alone])[0].severity == "error"


# ---- item 6: a library frame is never the place to fix ------------------------------------------------

def test_a_zero_over_zero_inside_a_library_loss_names_the_users_call_and_the_empty_batch():
    library = SourceLocation("/venv/lib/python3.11/site-packages/transformers/loss/loss_utils.py", 48, "fixed_cross_entropy",
                             "loss = loss / num_items_in_batch", library=True)
    event = NonfiniteEvent(precision="32-true", step=2, phase="loss", kind="nan", op="aten.div.Tensor", source=library,
                           inputs=[TensorSummary(name="input0", shape=[], dtype="float32", min=0.0, max=0.0, zeros=1),
                                   TensorSummary(name="input1", shape=[], dtype="float32", min=0.0, max=0.0, zeros=1)])
    run = RunTrace(precision="32-true", status="nonfinite", steps=[StepRecord(step=i, loss=2.0) for i in range(2)],
                   first_nonfinite=event)
    trace = trace_of(run)
    trace.functions["loss_fn"] = SourceLocation("model.py", 30, "loss_fn", "return model(**batch).loss")
    top = diagnose(trace)[0]
    assert top.id == "empty-reduction", top
    assert top.source is not None and not top.source.library and top.source.file == "model.py"
    assert "model.py:30" in top.fix and "-100" in top.fix and "loss_utils.py" not in str(top.source)


# ---- item 3: no fix contradicts its own report's experiments ----------------------------------------

def test_no_corpus_fix_contradicts_its_own_experiments():
    """A representative subset of the corpus, scanned with the confirming experiments on (the
    corpus test runs most entries without them): a refuted clipping, eps, lr, float32 or bf16
    change is never what a fix proposes."""
    import sys
    import yaml
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from corpus_score import CORPUS, fix_contradictions, scan_kwargs
    entries = {e["file"]: e for e in yaml.safe_load((CORPUS / "expected.yaml").read_text())}
    subset = ["fp16_true_sum_loss", "adam_eps_zero", "normalized_sgd_zero_grad", "vae_logvar_exp",
              "uncertainty_weight_collapse", "kl_div_masked"]
    tried = 0
    for name in subset:
        entry = entries[name + ".py"]
        doc = nandoctor.scan(CORPUS / entry["file"], **scan_kwargs(entry, experiments=True)).to_dict()
        tried += sum(1 for e in doc["experiments"] if e["outcome"] == "nonfinite")
        assert not fix_contradictions(doc), (name, fix_contradictions(doc))
    assert tried, "the subset must hold at least one experiment that still failed"


def test_a_refuted_lower_lr_and_clipping_are_not_what_the_fix_proposes():
    runs = diverging("32-true", 6)
    experiments = [ExperimentResult(id="lower-lr", label="lr 1e+01 -> 1e+00", precision="32-true", steps_run=6,
                                    outcome="nonfinite", first_bad_step=8, change={"lr_scale": 0.1}),
                   ExperimentResult(id="lower-lr", label="lr 1e+01 -> 1e-01", precision="32-true", steps_run=20,
                                    outcome="finite", change={"lr_scale": 0.01}),
                   ExperimentResult(id="clip-grad", label="gradients clipped at norm 1.0", precision="32-true",
                                    steps_run=6, outcome="nonfinite", first_bad_step=7, change={"grad_clip": 1.0})]
    findings = diagnose(trace_of(runs, experiments=experiments))
    top = findings[0]
    assert top.id == "high-lr" and "to 1e-01 (re-trained with it, the run stayed finite)" in top.fix, top.fix
    assert all("clip_grad_norm_" not in f.fix and "clip gradients" not in f.fix for f in findings), \
        [(f.id, f.fix) for f in findings]
    untested = diagnose(trace_of(diverging("32-true", 6)))[0]
    assert "untested" in untested.fix


def test_one_origin_in_several_precisions_is_one_finding_naming_them():
    def run(precision, step):
        return RunTrace(precision=precision, status="nonfinite", steps=[StepRecord(step=i, loss=1.0) for i in range(step)],
                        first_nonfinite=NonfiniteEvent(precision=precision, step=step, phase="forward", kind="nan",
                                                       op="aten.my_custom_op.default", module="block",
                                                       user_source=SourceLocation("m.py", 7, "forward", "y = op(x)")))
    findings = diagnose(trace_of(run("32-true", 4), run("bf16-mixed", 3)))
    unexplained = [f for f in findings if f.id == "unexplained-nonfinite"]
    assert len(unexplained) == 1 and unexplained[0].precisions == ["32-true", "bf16-mixed"], [f.title for f in findings]
    assert "bf16-mixed at step 3" in unexplained[0].title
    assert not any("None" in line for f in findings for line in [f.title, f.fix, *f.evidence])


# ---- a lower learning rate that only delays the failure confirms nothing ------------------------------

# A log-variance the loss pushes down by 10 x lr every step (its task has no labels: loss 0): exp(-s)
# overflows at step 9 with lr 1, at step 89 with lr 0.1. A lower lr slows the drift; it fixes nothing.
LOG_VARIANCE_DRIFT = '''
import torch
from torch import nn


class Weighted(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 1)
        self.log_var = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.fc(x), self.log_var


def build_model():
    return Weighted()


def get_batch(step):
    x = torch.randn(16, 4)
    return x, x.sum(dim=1, keepdim=True)


def loss_fn(outputs, y):
    pred, log_var = outputs
    unlabelled = torch.zeros(())
    return ((pred - y) ** 2).mean() + torch.exp(-log_var) * unlabelled + 10 * log_var


def build_optimizer(params):
    return torch.optim.SGD(params, lr=1.0)
'''


def test_a_lower_lr_that_only_delays_a_drift_refutes_high_lr_instead_of_confirming_it(tmp_path):
    """Bug (uncertainty_weight_collapse, policy_log_std_collapse with experiments on): lr / 10 and
    lr / 100 stayed finite over the planned horizon, which a failure delayed 10x never reaches, and
    confirmed high-lr over the op that overflows. The lr / 10 run now goes on to where a delayed
    failure would come, and a finite run shorter than that failure is no confirmation."""
    doc = nandoctor.scan(write(tmp_path, LOG_VARIANCE_DRIFT), precisions=["32-true"], steps=12).to_dict()
    assert doc["first_nonfinite"]["step"] == 9
    lower = {e["change"]["lr_scale"]: e for e in doc["experiments"] if e["id"] == "lower-lr"}
    assert lower[0.1]["outcome"] == "nonfinite" and lower[0.1]["first_bad_step"] > 60, lower[0.1]
    assert lower[0.01]["outcome"] == "finite" and lower[0.01]["steps_run"] < lower[0.1]["steps_run"]
    assert doc["causes"][0]["id"] == "unstable-op", [(c["id"], c["confirmed"]) for c in doc["causes"]]
    high = [c for c in doc["causes"] if c["id"] == "high-lr"]
    assert not high or high[0]["confirmed"] is False, high
    assert not high or any(x.startswith("neutral: lr") and "delayed" in x for x in high[0]["experiments"]), high


def test_a_lower_lr_finite_over_the_longer_horizon_still_confirms_high_lr():
    runs = diverging("32-true", 6)
    experiments = [ExperimentResult(id="lower-lr", label="lr 1e+01 -> 1e+00", precision="32-true", steps_run=88,
                                    outcome="finite", change={"lr_scale": 0.1}),
                   ExperimentResult(id="lower-lr", label="lr 1e+01 -> 1e-01", precision="32-true", steps_run=11,
                                    outcome="finite", change={"lr_scale": 0.01})]
    top = diagnose(trace_of(runs, experiments=experiments))[0]
    assert top.id == "high-lr" and top.confirmed is True, (top.id, top.experiments)
    assert "to 1e+00 (re-trained with it, the run stayed finite)" in top.fix, top.fix


def test_a_symptom_whose_clipping_was_confirmed_stays_under_the_divergence_that_shows_it():
    """Bug (poly_lr_negative with experiments on): clipping kept a run ascending a negative lr finite
    over the horizon, so the confirmed exploding-activations led over the schedule bug."""
    experiments = [ExperimentResult(id="clip-grad", label="gradients clipped at norm 1.0", precision="32-true",
                                    steps_run=12, outcome="finite", change={"grad_clip": 1.0})]
    findings = diagnose(trace_of(diverging("32-true", 6), experiments=experiments))
    clipped = [f for f in findings if f.id in ("exploding-gradients", "exploding-activations") and f.confirmed]
    assert clipped, [(f.id, f.confirmed) for f in findings]
    assert findings[0].id == "high-lr", [(f.id, f.confirmed, f.symptom_of) for f in findings]
    assert all(f.symptom_of == "high-lr" for f in clipped)


def test_a_dtype_experiment_of_a_mixed_run_leaves_the_batch_alone_before_its_step():
    """Bug (fp16_regression_large_target with experiments on): the bf16 re-run of step 50 cast the batch
    to the autocast float16 from step 0, made the 9e4 targets inf there, and refuted fp16-overflow."""
    import sys
    import yaml
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from corpus_score import CORPUS, scan_kwargs
    entry = next(e for e in yaml.safe_load((CORPUS / "expected.yaml").read_text())
                 if e["file"] == "fp16_regression_large_target.py")
    doc = nandoctor.scan(CORPUS / entry["file"], **scan_kwargs(entry, experiments=True)).to_dict()
    rerun = [e for e in doc["experiments"] if e["id"] == "step-bf16"]
    assert rerun and rerun[0]["outcome"] == "finite", rerun
    assert doc["causes"][0]["id"] == "fp16-overflow", [(c["id"], c["confirmed"]) for c in doc["causes"]]
