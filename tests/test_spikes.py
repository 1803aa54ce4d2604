"""Spikes and early warnings through the public surfaces: a tiny Transformer at a high learning
rate warns of attention-logit growth at least 20 steps before its first NaN (watch, `nandoctor
run`, the Lightning and Hugging Face callbacks); a finite loss spike is detected and explained by the layer that
moved first; SDPA and nn.MultiheadAttention logits are measured as the definition says."""
from __future__ import annotations

import copy
import json
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import nandoctor
from nandoctor.trace import EarlyWarning, RunTrace, Trace
from tests.conftest import json_of, run_cli

SCRIPTS = Path(__file__).parent / "scripts"
DEMO = SCRIPTS / "tiny_transformer_high_lr.py"
sys.path.insert(0, str(SCRIPTS))
import tiny_transformer_high_lr as demo  # noqa: E402

EVERY = 5          # sample often: the tiny model diverges within ~40 steps
LEAD = 20          # the bar: warned at least 20 steps before the first NaN


def _first(warnings_: list, cause: str):
    return min((w for w in warnings_ if w.cause == cause), key=lambda w: w.step, default=None)


def test_watch_warns_of_attention_logit_growth_20_steps_before_the_first_nan(tmp_path):
    model = demo.build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.5)
    watch = nandoctor.watch(model, optimizer, out=tmp_path, early_warnings={"every": EVERY})
    data = demo.batches()
    with pytest.raises(nandoctor.NonFiniteError) as caught, pytest.warns(nandoctor.InstabilityWarning, match="attention-logit-growth"):
        for _ in range(200):
            x, y = next(data)
            with watch.step((x, y)):
                loss = watch.loss(demo.loss_of(model, x, y))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    nan_step = caught.value.step
    first = _first(watch.early_warnings, "attention-logit-growth")
    assert first is not None, watch.early_warnings
    assert first.module.endswith(".attn") and first.statistic == "attention_logit_max"
    assert first.value >= 50 and first.ratio >= 2 and first.slope > 0
    assert nan_step - first.step >= LEAD, (first.step, nan_step)
    # The bundle carries the warnings, so a replay's report can name them.
    manifest = json.loads((caught.value.bundle / "manifest.json").read_text())
    assert any(w["cause"] == "attention-logit-growth" for w in manifest["detail"]["early_warnings"])


def test_nandoctor_run_reports_the_warning_as_a_finding_before_the_nan(tmp_path):
    config = tmp_path / "nandoctor.yaml"
    config.write_text(f"early_warnings:\n  every: {EVERY}\n")
    result = run_cli("run", "--config", str(config), "--format", "json", "--no-experiments",
                     "--out", str(tmp_path / "bundles"), str(DEMO), "--steps", "200")
    doc = json_of(result)
    stopped = doc["script"]["stopped_at_step"]
    assert result.exit_code == 1 and stopped is not None
    growth = [w for w in doc["early_warnings"] if w["cause"] == "attention-logit-growth"]
    assert growth and stopped - min(w["step"] for w in growth) >= LEAD
    finding = next(c for c in doc["causes"] if c["id"] == "attention-logit-growth")
    assert finding["severity"] == "warning" and "qk-norm" in finding["fix"]
    assert any("steps before the first NaN/Inf" in line for line in finding["evidence"])


def test_lightning_callback_warns_before_the_nan(tmp_path):
    L = pytest.importorskip("lightning")
    from nandoctor.integrations.lightning import NanDoctorCallback

    class LitTiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = demo.build_model()

        def training_step(self, batch, batch_idx):
            return demo.loss_of(self.net, *batch)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=0.5)

    data = demo.batches()
    pairs = [next(data) for _ in range(120)]
    loader = torch.utils.data.DataLoader(pairs, batch_size=None)
    callback = NanDoctorCallback(out=tmp_path / "bundles", early_warnings={"every": EVERY})
    trainer = L.Trainer(max_steps=120, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                        default_root_dir=tmp_path)
    with warnings.catch_warnings(), pytest.raises(nandoctor.NonFiniteError) as caught:
        warnings.simplefilter("ignore")
        trainer.fit(LitTiny(), loader)
    first = _first(callback.watch.early_warnings, "attention-logit-growth")
    assert first is not None and caught.value.step - first.step >= LEAD


def test_transformers_callback_warns_before_the_nan(tmp_path):
    """The same demonstration under Hugging Face's Trainer: the demo model returns its loss in a
    dict, the Trainer's own AdamW runs at lr 0.5 with clipping off (max_grad_norm 0). The samples
    are drawn in order: a shuffled order would depend on the random state earlier tests left."""
    transformers = pytest.importorskip("transformers")
    from nandoctor.integrations.transformers import NanDoctorCallback

    class Demo(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = demo.build_model()

        def forward(self, input_ids, labels):
            return {"loss": demo.loss_of(self.net, input_ids, labels)}

    class InOrder(transformers.Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    data = demo.batches()
    samples = [{"input_ids": x, "labels": y} for _ in range(120) for x, y in zip(*next(data))]
    callback = NanDoctorCallback(out=tmp_path / "bundles", early_warnings={"every": EVERY})
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=120, per_device_train_batch_size=8,
                                          learning_rate=0.5, lr_scheduler_type="constant", weight_decay=0.01,
                                          max_grad_norm=0.0, report_to=[], save_strategy="no", logging_strategy="no",
                                          use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True)
    with warnings.catch_warnings(), pytest.raises(nandoctor.NonFiniteError) as caught:
        warnings.simplefilter("ignore")
        InOrder(model=Demo(), args=args, train_dataset=samples, callbacks=[callback]).train()
    first = _first(callback.watch.early_warnings, "attention-logit-growth")
    assert first is not None and first.module.endswith(".attn")
    assert caught.value.step - first.step >= LEAD, (first.step, caught.value.step)
    assert (caught.value.bundle / "manifest.json").is_file()


def _mlp_with_a_spike(spike_step: int, steps: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    watch = nandoctor.watch(model, optimizer, on_nonfinite="raise", early_warnings=False,
                            spikes={"warmup": 10, "window": 32})
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(steps):
            x = torch.randn(32, 8, generator=g)
            y = x[:, :1].clone()
            if step == spike_step:
                y = y * 50.0          # a bad batch: finite, but the loss jumps
            loss = watch.loss(F.mse_loss(model(x), y))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    watch.close()
    return watch, caught


def test_a_finite_loss_spike_is_detected_and_the_layer_that_moved_first_is_named():
    watch, caught = _mlp_with_a_spike(spike_step=40, steps=50)
    spikes = [w for w in watch.early_warnings if w.cause in ("loss-spike", "grad-spike")]
    assert [w.step for w in spikes] == [40], spikes
    spike = spikes[0]
    assert spike.cause == "loss-spike" and spike.finite and spike.sigma >= 6 and spike.ratio > 10
    assert spike.moved and spike.moved[0].module in ("0", "2") and spike.moved[0].statistic == "grad_norm"
    assert spike.moved[0].ratio >= 2 and spike.moved[0].first_step == 40
    assert any("loss-spike" in str(w.message) and "moved first" in str(w.message) for w in caught)


def test_an_isolated_spike_the_run_recovers_from_is_info_and_the_run_passes():
    watch, _ = _mlp_with_a_spike(spike_step=30, steps=50)
    spike = next(w for w in watch.early_warnings if w.cause == "loss-spike")
    assert spike.recovered_after is not None and 1 <= spike.recovered_after <= 20
    from nandoctor.diagnose import diagnose
    from nandoctor.diagnose.verdict import scan_failed, verdict
    run = RunTrace(precision="32-true", early_warnings=list(watch.early_warnings))
    trace = Trace(model_file="m.py", config={}, device="cpu", torch_version="", tool_version="", runs=[run])
    found = {f.id: f for f in diagnose(trace)}
    assert found["loss-spike"].severity == "info"
    assert any("step(s) later" in line for line in found["loss-spike"].evidence)
    assert verdict(found.values(), failed=scan_failed(trace)) == "pass"


@pytest.mark.parametrize("change", ["recurring", "not_recovered", "nonfinite_later", "skipped"])
def test_a_spike_warns_when_it_stays_up_precedes_a_nan_or_a_policy_acted(change):
    from nandoctor.diagnose import diagnose
    from nandoctor.trace import NonfiniteEvent
    spikes = [EarlyWarning(cause="loss-spike", step=s, statistic="loss", value=9.0, baseline=1.0, ratio=9.0, sigma=8.0,
                           recovered_after=2) for s in ((10, 40, 70) if change == "recurring" else (40,))]
    run = RunTrace(precision="32-true", early_warnings=spikes)
    if change == "not_recovered":
        spikes[0].recovered_after = None
    elif change == "skipped":
        spikes[0].action = "skip"
    elif change == "nonfinite_later":
        run.first_nonfinite = NonfiniteEvent(precision="32-true", step=60, phase="forward", kind="nan")
    trace = Trace(model_file="m.py", config={}, device="cpu", torch_version="", tool_version="", runs=[run])
    finding = {f.id: f for f in diagnose(trace)}["loss-spike"]
    if change == "recurring":     # noisy but always back within steps: reported, counted, not a warning
        assert finding.severity == "info" and "3 spikes of loss in this run (steps 10-70), 3 back within 2 step(s)" in finding.evidence
    else:
        assert finding.severity == "warning"


@pytest.mark.parametrize("trained_after", [150, 40])
def test_a_spike_that_never_fell_back_but_the_run_trained_long_past_is_info(trained_after):
    """Regression (bench round 3, yunjey/pytorch-tutorial's GAN): the discriminator's gradient
    norm settled ~6x higher at step 326-329 and the run trained 270 finite steps more; a level
    the run settled at is no blow-up in the making. Shortly before the run's end it still warns."""
    from nandoctor.diagnose import diagnose
    from nandoctor.trace import StepRecord
    spikes = [EarlyWarning(cause="grad-spike", step=s, statistic="grad_norm", value=6.0, baseline=1.0, ratio=6.0,
                           sigma=8.0, recovered_after=None) for s in (30, 31)]
    last = 31 + trained_after
    run = RunTrace(precision="32-true", early_warnings=spikes, start_step=last - 63,
                   steps=[StepRecord(step=i, loss=1.0) for i in range(last - 63, last + 1)])
    trace = Trace(model_file="m.py", config={}, device="cpu", torch_version="", tool_version="", runs=[run])
    finding = {f.id: f for f in diagnose(trace)}["grad-spike"]
    assert finding.severity == ("info" if trained_after >= 100 else "warning")


def test_no_spike_and_no_warning_in_a_healthy_run():
    watch, _ = _mlp_with_a_spike(spike_step=-1, steps=60)
    assert watch.early_warnings == []


def test_the_spike_policy_hook_is_called_and_can_skip_the_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    watch = nandoctor.watch(model, optimizer, early_warnings=False, spikes={"warmup": 5}, warn=False)
    seen = []

    def handle_spike(statistic, reason, capture):
        seen.append((statistic, capture.step, reason))
        watch._drop_gradients()
        return True
    watch.handle_spike = handle_spike       # the interface the skip/rollback policies implement
    for step in range(20):
        x = torch.randn(16, 4)
        y = x[:, :1] * (100.0 if step == 15 else 1.0)
        before = model.weight.detach().clone()
        loss = watch.loss(F.mse_loss(model(x), y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 15:
            assert torch.equal(before, model.weight)       # the step was skipped
    watch.close()
    assert [(s, st) for s, st, _ in seen] == [("loss", 15)]
    assert watch.early_warnings[-1].step == 15 and watch.early_warnings[-1].cause == "loss-spike"


def test_sdpa_and_multihead_attention_logits_are_measured():
    from nandoctor.watcher.early_warnings import EarlyWarningSampler, early_warning_options

    class Sdpa(torch.nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sdpa = Sdpa()
            self.mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, q, k, v, x):
            top = F.scaled_dot_product_attention(q, k, v)   # outside every submodule: not attention
            return self.sdpa(q, k, v).sum() + self.mha(x, x, x)[0].sum() + top.sum()

    torch.manual_seed(0)
    net = Net()
    q, k, v = (torch.randn(1, 2, 4, 8) * 3 for _ in range(3))
    x = torch.randn(1, 4, 8)
    sampler = EarlyWarningSampler(net, early_warning_options({"every": 1}), lambda warning: None)
    sampler.begin_step(0)
    net(q, k, v, x).backward()
    sampler.finish()
    series = {key: points[-1][1] for key, points in sampler.series.items()}
    assert series[("sdpa", "attention_logit_max")] == pytest.approx(float((q @ k.transpose(-2, -1)).abs().amax()) / math.sqrt(8), rel=1e-4)
    e, d = 8, 4
    with torch.no_grad():
        wq, wk = net.mha.in_proj_weight[:e], net.mha.in_proj_weight[e:2 * e]
        bq, bk = net.mha.in_proj_bias[:e], net.mha.in_proj_bias[e:2 * e]
        qm = (x @ wq.T + bq).reshape(1, 4, 2, d).transpose(1, 2)
        km = (x @ wk.T + bk).reshape(1, 4, 2, d).transpose(1, 2)
        expected_mha = float((qm @ km.transpose(-2, -1)).abs().amax()) / math.sqrt(d)
    assert series[("mha", "attention_logit_max")] == pytest.approx(expected_mha, rel=1e-4)
    assert ("", "attention_logit_max") not in series
    assert not sampler.active and not sampler._handles       # every hook removed after the sampled step


def test_rules_turn_a_hand_made_trace_into_warning_findings():
    from nandoctor.diagnose import diagnose
    run = RunTrace(precision="32-true")
    run.early_warnings = [
        EarlyWarning(cause="attention-logit-growth", step=5, statistic="attention_logit_max", value=3472.0,
                     module="blocks.0.attn", baseline=1.3, ratio=2670.0, slope=68.5, since_step=0),
        EarlyWarning(cause="output-logit-drift", step=100, statistic="log_z", value=-46.0, baseline=3.4, ratio=13.5,
                     since_step=60),
    ]
    trace = Trace(model_file="m.py", config={}, device="cpu", torch_version="", tool_version="", runs=[run])
    roundtrip = Trace.from_dict(json.loads(json.dumps(trace.to_dict())))
    findings = {f.id: f for f in diagnose(roundtrip)}
    attention = findings["attention-logit-growth"]
    assert attention.severity == "warning" and attention.module == "blocks.0.attn"
    assert "3472" in attention.evidence[0] and "2.67e+03x" in attention.evidence[1]
    assert findings["output-logit-drift"].severity == "warning"


@pytest.mark.parametrize("cause", ["attention-logit-growth", "output-logit-drift", "adam-update-anomaly",
                                   "activation-outliers", "loss-spike", "grad-spike"])
def test_explain_prints_each_new_cause(cause):
    result = run_cli("explain", cause)
    assert result.exit_code == 0 and "How to fix" in result.stdout


def test_a_bad_spikes_config_key_is_one_paragraph_and_exit_2(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("spikes:\n  sigma: 3\n")
    result = run_cli("run", "--config", str(config), str(DEMO), "--steps", "1")
    assert result.exit_code == 2 and "spikes.sigma" in result.stderr and "Traceback" not in result.stderr


def test_transformers_callback_warns_of_gpt2_attention_logit_growth_from_sdpa(tmp_path):
    """Hugging Face GPT-2 (SDPA attention) at lr 0.05: float32 keeps it finite for these steps,
    and the callback still warns of the growing logits of its attention modules."""
    transformers = pytest.importorskip("transformers")
    from nandoctor.integrations.transformers import NanDoctorCallback

    class Tokens(torch.utils.data.Dataset):
        def __init__(self):
            self.ids = torch.randint(0, 32, (320, 16), generator=torch.Generator().manual_seed(1))

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=32, n_layer=2,
                                                                 n_head=2, bos_token_id=0, eos_token_id=0))
    callback = NanDoctorCallback(out=tmp_path / "bundles", early_warnings={"every": EVERY})
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=40, per_device_train_batch_size=8,
                                          learning_rate=0.05, lr_scheduler_type="constant", report_to=[],
                                          save_strategy="no", logging_strategy="no", use_cpu=True,
                                          dataloader_num_workers=0, seed=0, disable_tqdm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[callback]).train()
    growth = [w for w in callback.watch.early_warnings if w.cause == "attention-logit-growth"]
    assert growth and all(w.module.endswith(".attn") for w in growth), callback.watch.early_warnings


def test_fused_adam_float16_moments_that_underflow_are_not_a_collapse():
    """Regression (bench round 3, run_clm.py --dtype float16): a fused Adam stores float16
    moments but computes the update in float32, so a stored exp_avg_sq that underflowed to 0 is
    not what the update divided by; the weights stay finite and no collapse is warned."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1)).half()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    watch = nandoctor.watch(model, optimizer, early_warnings={"every": 2}, spikes=False, warn=False)
    for _ in range(6):
        x = torch.randn(16, 8, dtype=torch.float16)
        loss = watch.loss(model(x).float().pow(2).mean() * 1e-3)   # gradients ~1e-3: 1e-3 * g**2 underflows
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    watch.close()
    assert any(bool((s["exp_avg_sq"] == 0).any()) for s in optimizer.state.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not [w for w in watch.early_warnings if w.statistic == "exp_avg_sq_collapse"], watch.early_warnings


def test_adam_second_moment_collapse_is_warned():
    """Gradients of 1e-10: Adam's exp_avg_sq (~1e-20) sits far below eps**2 (1e-16), so the
    update is m / eps rather than m / sqrt(v): the update-size anomaly."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    watch = nandoctor.watch(model, optimizer, early_warnings={"every": 2}, spikes=False, warn=False)
    for _ in range(6):
        x = torch.randn(16, 8)
        loss = watch.loss(model(x).pow(2).mean() * 1e-10)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    watch.close()
    collapse = [w for w in watch.early_warnings if w.statistic == "exp_avg_sq_collapse"]
    assert len(collapse) == 1 and collapse[0].cause == "adam-update-anomaly" and collapse[0].value > 0.5


def test_a_large_layers_update_ratio_is_measured_on_a_sample_within_a_few_percent():
    """issue 20: the early warnings' optimizer-step statistics read a strided sample of each
    parameter (a copy of the whole weights was +340 MB of peak RSS on a GPT-2-small shape); the
    warned update ratio of a 131k-parameter layer still matches ||dw|| / ||w|| of the whole layer."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.Tanh(), torch.nn.Linear(512, 1))
    # ~0.05 per weight of the large layer (ratio ~1); the small head barely moves
    optimizer = torch.optim.Adam([{"params": model[0].parameters(), "lr": 0.05},
                                  {"params": model[2].parameters(), "lr": 1e-6}])
    watch = nandoctor.watch(model, optimizer, early_warnings={"every": 1}, spikes=False, warn=False)
    exact = {}
    for step in range(3):
        before = [p.detach().clone() for p in model[0].parameters()]
        loss = watch.loss(model(torch.randn(32, 256)).pow(2).mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        delta = sum((p.detach() - b).pow(2).sum() for p, b in zip(model[0].parameters(), before)).sqrt()
        exact[step] = float(delta / sum(b.pow(2).sum() for b in before).sqrt())
    watch.close()
    warned = [w for w in watch.early_warnings if w.statistic == "update_ratio"]
    assert warned and warned[0].module == "0", watch.early_warnings
    assert abs(warned[0].value / exact[warned[0].step] - 1) < 0.05, (warned[0], exact)


def _adam_series(model_seed: int, rebuild_every_sample: bool, monkeypatch) -> dict:
    from nandoctor.watcher import early_warnings as ew
    if rebuild_every_sample:
        monkeypatch.setattr(ew._AdamPlan, "current", lambda self, optimizer, owners: False)
    torch.manual_seed(model_seed)
    model = torch.nn.Sequential(*(torch.nn.Linear(8, 8) for _ in range(5)), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW([{"params": model[:3].parameters()},
                                   {"params": model[3:].parameters(), "betas": (0.8, 0.99), "eps": 1e-6}])
    watch = nandoctor.watch(model, optimizer, early_warnings={"every": 1}, spikes=False, warn=False)
    plans = []
    for step in range(6):
        if step == 3:   # new state tensors (as a resumed run has): the plan is made again
            optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        loss = watch.loss(model(torch.randn(16, 8)).pow(2).mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        plans.append(watch.early._adam_plan)
    watch.close()
    series = {key: [v for _, v in points] for key, points in watch.early.series.items()
              if key[1] in ("update_rms", "exp_avg_sq_collapse")}
    monkeypatch.undo()
    return series, plans


def test_the_adam_statistics_plan_is_reused_and_made_again_when_the_state_is_replaced(monkeypatch):
    """A sampled step's Adam statistics read the moments through views planned once per state
    layout (Python per parameter was ~19 ms of a 1000-module model's sampled step): the numbers
    equal a plan made afresh at every sample, and a replaced state (load_state_dict) is replanned."""
    cached, plans = _adam_series(0, False, monkeypatch)
    fresh, _ = _adam_series(0, True, monkeypatch)
    assert cached and cached == fresh
    assert plans[1] is plans[2] and plans[3] is not plans[2] and plans[4] is plans[3]


def test_a_model_without_attention_calls_is_sampled_without_the_function_mode_then_rechecked():
    """The function mode that sees softmax/SDPA calls costs every forward call a Python handler:
    after a sample under it saw none, samples skip it, and every MODE_RECHECK-th sample runs it
    again, so a branch that starts to attend later is still measured. (Its softmax sits in a
    first-level submodule: the step that the model's own pre-hook begins pushes the model too.)"""
    from nandoctor.watcher.early_warnings import MODE_RECHECK

    class Block(torch.nn.Module):
        attend = False

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, x):
            h = self.proj(x)
            if self.attend:
                h = torch.softmax(h @ h.transpose(-2, -1) * 30, dim=-1) @ h
            return h

    torch.manual_seed(0)
    model = torch.nn.Sequential(Block(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    watch = nandoctor.watch(model, optimizer, early_warnings={"every": 1}, spikes=False, warn=False)
    under_mode = []
    for step in range(2 * MODE_RECHECK):
        if step == 3:
            model[0].attend = True
        loss = watch.loss(model(torch.randn(4, 8)).pow(2).mean())
        under_mode.append(watch.early._mode is not None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    watch.close()
    assert under_mode[:MODE_RECHECK + 1] == [True] + [False] * (MODE_RECHECK - 1) + [True]
    assert all(under_mode[MODE_RECHECK:])                # attention seen at the recheck: the mode stays
    attention = watch.early.series[("0", "attention_logit_max")]
    assert [step for step, _ in attention][0] == MODE_RECHECK
