"""Every sample model: its top cause, verdict and location, through the Python API."""
from __future__ import annotations

import pytest

from conftest import scan_sample

PURE16 = ("32-true", "16-true")
FP32 = ("32-true",)

# sample: (precisions, top cause, verdict, cause location)
EXPECTED = {
    "tabular_counts": (None, "data-nonfinite", "fail", "sample_models/tabular_counts.py:12"),
    "house_prices": (None, "data-scale", "fail", "sample_models/house_prices.py:14"),
    "digit_labels": (None, "label-range", "fail", "sample_models/digit_labels.py:12"),
    "sgd_regressor": (None, "high-lr", "fail", "sample_models/sgd_regressor.py:17"),
    "temperature_scaling": (None, "bad-init", "fail", "sample_models/temperature_scaling.py:12"),
    "deep_mlp_init": (None, "bad-init", "fail", "sample_models/deep_mlp_init.py:16"),
    "nll_classifier": (None, "unstable-op", "fail", "sample_models/nll_classifier.py:28"),
    "pairwise_embedding": (None, "grad-singularity", "fail", "sample_models/pairwise_embedding.py:14"),
    "padded_attention": (None, "masked-softmax", "fail", "sample_models/padded_attention.py:18"),
    "token_tagger": (None, "empty-reduction", "fail", "sample_models/token_tagger.py:32"),
    "hf_bert_mlm": (None, "empty-reduction", "fail", "sample_models/hf_bert_mlm.py:14"),
    "long_context_attention": (None, "fp16-overflow", "fail", "sample_models/long_context_attention.py:21"),
    "unit_normalize": (PURE16, "fp16-underflow", "fail", "sample_models/unit_normalize.py:14"),
    "demand_forecast": (None, "loss-scale-collapse", "fail", "sample_models/demand_forecast.py:8"),
    "irnn": (None, "exploding-gradients", "fail", "sample_models/irnn.py:10"),
    "sigmoid_mlp": (None, "vanishing-gradients", "warn", "sample_models/sigmoid_mlp.py:7"),
    "half_adam": (PURE16, "optimizer-eps", "fail", "sample_models/half_adam.py:26"),
    "distill_banned_classes": (FP32, "masked-inf", "fail", "sample_models/distill_banned_classes.py:36"),
    "bf16_fast_norm": (("32-true", "bf16-true"), "bf16-precision", "fail", "sample_models/bf16_fast_norm.py:16"),
    "relu_rnn_forecaster": (FP32, "exploding-activations", "fail", "sample_models/relu_rnn_forecaster.py:14"),
}


@pytest.mark.parametrize("sample", sorted(EXPECTED))
def test_sample_top_cause_verdict_and_location(sample):
    precisions, cause, verdict, source = EXPECTED[sample]
    report = scan_sample(sample, precisions)
    doc = report.to_dict()
    top = doc["causes"][0]
    assert (top["id"], doc["verdict"], top["source"]) == (cause, verdict, source), doc["causes"][:3]
    assert top["fix"] and top["evidence"], "a cause always carries evidence and a fix"


def test_every_cause_id_has_a_sample():
    from nandoctor.diagnose import rule_ids
    covered = {expected[1] for expected in EXPECTED.values()}
    # Covered elsewhere: user-error (test_cli), scan-incomplete (max-seconds, LSTM), nonreproducible
    # (needs non-determinism), poisoned-optimizer-state, param-nonfinite, weight-blowup (need saved
    # state: test_postmortem); every id also has hand-made-trace tests in test_rules_causes.
    # A watched run's warnings and policies (test_spikes, test_policies) and a compiled run's
    # replay (test_compile_numerics) come from a watch or a bundle, never from a model-file scan.
    watched = {"loss-spike", "grad-spike", "attention-logit-growth", "output-logit-drift", "adam-update-anomaly",
               "activation-outliers", "data-outlier-samples", "compile-numerics"}
    missing = set(rule_ids()) - covered - watched - {"user-error", "nonreproducible", "scan-incomplete",
                                                     "poisoned-optimizer-state", "unexplained-nonfinite",
                                                     "param-nonfinite", "weight-blowup"}
    assert not missing


# Where the first non-finite value is born, exactly, for one sample of each phase.
PHASES = {
    "init": ("temperature_scaling", None, dict(phase="init", parameter="log_temperature", kind="inf", module="")),
    "data": ("tabular_counts", None, dict(phase="data", op="aten.log.default", tensor="inputs",
                                         source="sample_models/tabular_counts.py:12")),
    "forward": ("padded_attention", None, dict(phase="forward", op="aten._softmax.default", module="pool",
                                               kind="nan", masked_input=True, step=2,
                                               source="sample_models/padded_attention.py:18")),
    "loss": ("nll_classifier", None, dict(phase="loss", op="aten.log.default", module="", kind="inf",
                                         source="sample_models/nll_classifier.py:28")),
    "backward": ("pairwise_embedding", None, dict(phase="backward", op="aten.div.Tensor", forward_op="sqrt",
                                                  kind="nan", source="sample_models/pairwise_embedding.py:14")),
    "optimizer": ("half_adam", PURE16, dict(phase="optimizer", op="aten.addcdiv_.default", parameter="embed.weight",
                                            precision="16-true", kind="nan")),
}


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_first_nonfinite_event_per_phase(phase):
    sample, precisions, expected = PHASES[phase]
    event = scan_sample(sample, precisions).to_dict()["first_nonfinite"]
    assert event is not None
    assert {k: event[k] for k in expected} == expected
    assert event["reproduced"] is True


def test_unstable_op_fix_names_the_stable_form():
    top = scan_sample("nll_classifier").to_dict()["causes"][0]
    assert "torch.log_softmax" in top["fix"] and "nll_classifier.py:28" in top["fix"]
    event = scan_sample("nll_classifier").to_dict()["first_nonfinite"]
    assert event["producer"]["op"] == "aten._softmax.default"
    assert event["inputs"][0]["zeros"] > 0


def test_experiments_confirm_the_leading_cause():
    causes = scan_sample("sgd_regressor").to_dict()["causes"]
    top = causes[0]
    assert top["confirmed"] is True
    assert any(line.startswith("confirms: lr") for line in top["experiments"])


def test_refuted_hypothesis_loses_confidence():
    causes = {c["id"]: c for c in scan_sample("irnn").to_dict()["causes"]}
    assert causes["exploding-gradients"]["confirmed"] is True
    assert causes["high-lr"]["confirmed"] is False and causes["high-lr"]["confidence"] < 0.5


def test_fp16_only_failure_is_a_precision_problem():
    doc = scan_sample("long_context_attention").to_dict()
    runs = {r["precision"]: r["status"] for r in doc["runs"]}
    assert runs == {"32-true": "ok", "16-mixed": "nonfinite", "bf16-mixed": "ok"}
    top = doc["causes"][0]
    assert top["precisions"] == ["16-mixed"] and "bf16-mixed" in top["fix"]


def test_loss_scale_collapse_is_recorded_not_a_failure_of_the_run():
    doc = scan_sample("demand_forecast").to_dict()
    fp16 = next(r for r in doc["runs"] if r["precision"] == "16-mixed")
    assert fp16["status"] == "ok" and len(fp16["skipped_steps"]) == fp16["steps_run"]
    assert fp16["loss_scales"][0] > fp16["loss_scales"][-1]
    assert doc["first_nonfinite"] is None


ALL_PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
HEALTHY = ["healthy_mlp", "healthy_cnn_bn", "healthy_transformer", "healthy_lstm", "healthy_hf_gpt2"]


@pytest.mark.parametrize("sample", HEALTHY)
def test_healthy_samples_under_all_five_precisions(sample):
    doc = scan_sample(sample, ALL_PRECISIONS, steps=6).to_dict()
    assert doc["first_nonfinite"] is None
    assert not [c for c in doc["causes"] if c["severity"] == "error"], doc["causes"]
    # Pure float16 without loss scaling genuinely flushes small gradients to zero: the only
    # warning a healthy model may get, and only for 16-true.
    for cause in doc["causes"]:
        assert cause["id"] in ("fp16-underflow", "scan-incomplete"), cause
        if cause["id"] == "fp16-underflow":
            assert cause["precisions"] == ["16-true"]
    for run in doc["runs"]:
        assert run["status"] in ("ok", "unsupported"), run


@pytest.mark.parametrize("sample", HEALTHY)
def test_healthy_samples_pass_by_default(sample):
    doc = scan_sample(sample).to_dict()
    assert doc["verdict"] == "pass", doc["causes"]


def test_short_fp32_scan_of_log_softmax_is_unstable_op_not_a_where_trap():
    """Regression (issue 9): `scan nll_classifier.py --steps 2 --no-experiments -p fp32` topped with
    grad-singularity. In float32 the loss stays finite (nll_loss picks other classes than the
    -inf log-probability) and the NaN surfaces in the gradients; no torch.where dropped the -inf,
    so the log of the softmax is the cause, and its fix is log_softmax."""
    from conftest import SAMPLES, json_of, run_cli
    result = run_cli("scan", SAMPLES / "nll_classifier.py", "--steps", "2", "--no-experiments", "-p", "fp32",
                     "-f", "json")
    doc = json_of(result)
    assert result.exit_code == 1 and doc["verdict"] == "fail"
    event = doc["first_nonfinite"]
    assert (event["phase"], event["op"], event["surfaced_in"]) == ("loss", "aten.log.default", "gradients")
    assert event["dropped_by"]["op"] == "aten.nll_loss_forward.default"
    assert doc["causes"][0]["id"] == "unstable-op" and "log_softmax" in doc["causes"][0]["fix"]
    assert "grad-singularity" not in [c["id"] for c in doc["causes"]]
