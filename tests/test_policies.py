"""Issue 21: the policies that keep a run alive (skip, rollback), the skip list, the samples that
carry a spike or a NaN, and `SkipListSampler` on resume; through `nandoctor.watch`, `nandoctor
run` and the Lightning and Hugging Face callbacks."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import jsonschema
import pytest
import torch

import nandoctor
from conftest import run_cli
from test_formats import SCHEMA

BAD = (21, 22)          # the injected samples: one NaN row, one row scaled by 1e30 (its gradients overflow)


class Stream(torch.utils.data.Dataset):
    """A data stream with an injected bad batch: samples BAD are corrupt, the rest are fine."""

    def __init__(self, n=64, bad=BAD):
        g = torch.Generator().manual_seed(0)
        self.x, self.y, self.bad = torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g), bad

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i].clone()
        if i == self.bad[0]:
            x[1] = float("nan")
        elif i in self.bad[1:]:
            x = x * 1e30
        return x, self.y[i]


def build(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, opt


def train(watch, model, opt, loader, epochs=1, scheduler=None, scaler=None):
    losses = []
    for _ in range(epochs):
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            watch.loss(loss)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            opt.zero_grad()
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.item())
    return losses


def loader(dataset=None, sampler=None):
    return torch.utils.data.DataLoader(dataset or Stream(), batch_size=8, sampler=sampler)


def entries(folder):
    return json.loads((folder / "skip_list.json").read_text())["entries"]


class quiet(warnings.catch_warnings):
    def __enter__(self):
        super().__enter__()
        warnings.simplefilter("ignore")


def test_rollback_survives_an_injected_bad_batch_and_the_skip_list_names_its_samples(tmp_path):
    model, opt = build()
    watch = nandoctor.watch(model, opt, out=tmp_path, on_nonfinite="rollback", rollback={"every": 1, "keep": 2, "budget": 2})
    with pytest.warns(nandoctor.NonFiniteWarning, match="Rolled back to the state before step 1"):
        losses = train(watch, model, opt, loader())       # samples 16..23: batch 2
    watch.close()
    assert math.isfinite(losses[-1]) and all(torch.isfinite(p).all() for p in model.parameters())
    [entry] = entries(tmp_path)
    assert entry["policy"] == "rollback" and entry["step"] == 2 and entry["window"] == {"from_step": 1, "to_step": 2}
    assert entry["samples"] == [BAD[0]]        # the NaN row: the batch check names it before any forward
    assert entry["blame"]["dominant"][0]["index"] == BAD[0]
    assert watch.skipped_steps == 1 and watch.step_index == 8

    # The 1e30 row alone: its gradients overflow; the per-sample re-run names it among the 8.
    model, opt = build()
    watch = nandoctor.watch(model, opt, out=tmp_path / "overflow", on_nonfinite="rollback",
                            rollback={"every": 1, "keep": 2, "to": "disk"})
    with quiet():
        losses = train(watch, model, opt, loader(Stream(bad=(-1, BAD[1]))))
    assert len(list((tmp_path / "overflow" / "rollback").iterdir())) == 2       # bounded: keep=2 copies on disk
    watch.close()
    assert not list((tmp_path / "overflow" / "rollback").iterdir())
    [entry] = entries(tmp_path / "overflow")
    assert entry["samples"] == [BAD[1]] and entry["blame"]["method"] == "per-sample output magnitude"
    assert math.isfinite(losses[-1])

    # On resume the sampler leaves both lists' samples out, and nothing fires.
    sampler = nandoctor.SkipListSampler(torch.utils.data.SequentialSampler(range(64)), tmp_path)
    assert len(sampler) == 63 and BAD[0] not in list(sampler)
    sampler = nandoctor.SkipListSampler(range(64), {*nandoctor.SkipListSampler(range(64), tmp_path).skipped, BAD[1]})
    model, opt = build()
    with nandoctor.watch(model, opt, out=tmp_path / "resumed") as watch:
        train(watch, model, opt, loader(sampler=sampler))
    assert watch.nonfinite_steps == 0 and not (tmp_path / "resumed").exists()


def test_skip_leaves_optimizer_state_scheduler_and_scaler_untouched(tmp_path):
    model, opt = build()
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    watch = nandoctor.watch(model, opt, scaler, out=tmp_path, on_spike="skip", scheduler=scheduler)
    seen = {}
    original = watch.check_gradients

    def check_then_spike():                # what the spike detector does inside the step's check
        original()
        if watch._capture is not None and watch._capture.step == 3:
            seen["before"] = state(model, opt, scheduler, scaler)
            assert watch.handle_spike("loss", "test: a loss spike", None) is True
    watch.check_gradients = check_then_spike
    data = loader(Stream(bad=(-1, -1)))
    with quiet():
        for step, (x, y) in enumerate(data):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            watch.loss(loss)
            scaler.scale(loss).backward()
            scaler.step(opt)            # the optimizer's step pre-hook runs the (patched) check
            scaler.update()
            opt.zero_grad()
            scheduler.step()
            if step == 3:
                after = state(model, opt, scheduler, scaler)
                break
    watch.close()
    before = seen["before"]
    assert all(torch.equal(a, b) for a, b in zip(before["params"], after["params"]))
    assert before["steps"] == after["steps"] and all(torch.equal(a, b) for a, b in zip(before["moments"], after["moments"]))
    assert (before["lr"], before["epoch"]) == (after["lr"], after["epoch"])
    assert (before["scale"], before["growth"]) == (after["scale"], after["growth"])
    [entry] = entries(tmp_path)
    assert (entry["step"], entry["policy"], entry["check"]) == (3, "skip", "spike")
    assert entry["samples"] == list(range(24, 32))     # no sample dominates: the whole batch is listed


def state(model, opt, scheduler, scaler):
    return {"params": [p.detach().clone() for p in model.parameters()],
            "steps": [float(opt.state[p]["step"]) for p in model.parameters()],
            "moments": [opt.state[p]["exp_avg"].clone() for p in model.parameters()],
            "lr": opt.param_groups[0]["lr"], "epoch": scheduler.last_epoch,
            "scale": float(scaler.get_scale()), "growth": int(scaler._growth_tracker)}


def test_a_spike_is_blamed_on_its_samples_by_a_per_sample_loss_and_rolled_back(tmp_path):
    """A finite spike: sample 42 is extreme and mislabelled; `sample_loss` gives the per-sample loss."""
    model, opt = build()
    stream = Stream(bad=(-1, -1))
    stream.x[42] *= 50.0
    with torch.no_grad():        # an extreme input labelled with the class the model finds least likely
        stream.y[42] = model(stream.x[42:43]).argmin()
    per_sample = lambda model, batch: torch.nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="none")
    watch = nandoctor.watch(model, opt, out=tmp_path, on_spike="rollback", rollback={"every": 2, "keep": 2, "budget": 1},
                            sample_loss=per_sample)
    original = watch.check_gradients
    fired = []

    def check_then_spike():
        original()
        capture = watch._capture
        if capture is not None and capture.step in (5, 6):      # the second exceeds the budget of one
            fired.append(watch.handle_spike("grad_norm", "test: a gradient-norm spike", capture))
    watch.check_gradients = check_then_spike
    data = loader(stream)
    with quiet(), pytest.raises(nandoctor.NonFiniteError, match="rollback budget \\(1\\) is spent"):
        for x, y in data:
            with watch.step((x, y)):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad()
    first, stop = entries(tmp_path)
    assert fired == [True] and first["window"] == {"from_step": 4, "to_step": 5}
    assert first["samples"] == [42] and first["blame"]["statistic"] == "grad_norm"
    assert stop["policy"] == "stop" and stop["step"] == 6


def test_options_are_checked(tmp_path):
    model, opt = build()
    with pytest.raises(ValueError, match="on_spike must be one of warn, skip, rollback"):
        nandoctor.watch(model, opt, on_spike="stop")
    with pytest.raises(ValueError, match="unknown key"):
        nandoctor.watch(model, opt, on_nonfinite="rollback", rollback={"evry": 3})
    (tmp_path / "skip_list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a skip list"):
        nandoctor.SkipListSampler(range(3), tmp_path)


STREAM_SCRIPT = Path(__file__).parent / "scripts" / "stream_with_bad_batch.py"


def test_nandoctor_run_rollback_survives_the_bad_batch_and_reports_the_samples(tmp_path):
    out = tmp_path / "bundles"
    # The policy from the config's `policies` section, its copy interval from the flag (flags win).
    config = tmp_path / "nandoctor.yaml"
    config.write_text("policies:\n  on_nonfinite: rollback\n  rollback: {every: 7, budget: 3}\n")
    result = run_cli("run", "-c", config, "--rollback-every", "2", "--out", out, "--format", "json",
                     "--no-experiments", STREAM_SCRIPT)
    doc = json.loads(result.stdout)
    jsonschema.validate(json.loads(json.dumps(doc, allow_nan=False)), SCHEMA)
    run = doc["runs"][0]
    assert run["status"] == "ok" and math.isfinite(run["loss"]["last"]) and result.exit_code == 0
    assert [(i["step"], i["policy"], i["from_step"], i["samples"]) for i in run["interventions"]] == \
        [(2, "rollback", 0, [21, 22]), (14, "rollback", 12, [21, 22])]       # both epochs meet the bad batch
    [cause] = [c for c in doc["causes"] if c["id"] == "data-outlier-samples"]
    assert "dataset indices 21, 22" in cause["title"]
    assert [e["samples"] for e in entries(out)] == [[21, 22], [21, 22]]

    bad = run_cli("run", "--on-nonfinite", "retry", STREAM_SCRIPT)
    assert bad.exit_code == 2 and "stop, skip, rollback" in bad.stderr
    config.write_text("policies:\n  on_spike: retry\n")
    bad = run_cli("run", "-c", config, STREAM_SCRIPT)
    assert bad.exit_code == 2 and "policies.on_spike" in bad.stderr and "Traceback" not in bad.stderr
    # A spike policy alone keeps the default for NaN/Inf: the script is stopped and reported.
    stopped = run_cli("run", "--on-spike", "skip", "--out", tmp_path / "spike", "--format", "json", "--no-experiments",
                      STREAM_SCRIPT)
    doc = json.loads(stopped.stdout)
    assert stopped.exit_code == 1 and doc["runs"][0]["status"] == "nonfinite" and doc["first_nonfinite"]["step"] == 2
    assert not (tmp_path / "spike" / "skip_list.json").exists()


def test_data_outlier_samples_rule_on_a_hand_made_trace():
    from nandoctor.diagnose import diagnose
    from nandoctor.trace import BlamedSample, RunTrace, SampleBlame, Trace
    run = RunTrace(precision="32-true", sample_blame=[SampleBlame(
        step=7, check="spike", statistic="loss", method="sample_loss", samples=32, median=2.1, mad=0.2, share=0.93,
        dominant=[BlamedSample(index=901, micro_batch=0, row=5, score=48.0)])])
    trace = Trace(model_file="train.py", config={}, device="cpu", torch_version="x", tool_version="x")
    trace.runs.append(run)
    [finding] = [f for f in diagnose(trace) if f.id == "data-outlier-samples"]
    assert "dataset index 901" in finding.title and "loss 48" in finding.evidence[0] and "93%" in finding.evidence[0]
    # Many samples standing out is a batch-wide effect, not a few samples: no finding.
    run.sample_blame[0].dominant = [BlamedSample(index=i, micro_batch=0, row=i, score=48.0) for i in range(12)]
    assert not [f for f in diagnose(trace) if f.id == "data-outlier-samples"]


def lightning_fit(tmp_path, **callback_options):
    import lightning as L
    from nandoctor.integrations.lightning import NanDoctorCallback

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            self.log("loss", loss)
            self.last_loss = loss.detach()
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    callback = NanDoctorCallback(out=tmp_path, **callback_options)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                        default_root_dir=tmp_path)
    torch.manual_seed(0)
    module = Classifier()
    with quiet():
        trainer.fit(module, loader(Stream(bad=(BAD[0], -1))))
    return callback, module


def test_lightning_callback_rolls_back_and_resumes_without_the_listed_samples(tmp_path):
    callback, module = lightning_fit(tmp_path, on_nonfinite="rollback", rollback={"every": 1})
    assert math.isfinite(float(module.last_loss)) and callback.watch.step_index == 8
    [entry] = entries(tmp_path)
    assert (entry["step"], entry["policy"], entry["samples"]) == (2, "rollback", [BAD[0]])
    # The resume path: the callback honours the skip list (a step drawing a listed sample makes no update).
    callback, module = lightning_fit(tmp_path / "resumed", skip_list=tmp_path)
    assert callback.watch.nonfinite_steps == 0 and callback.watch.keep_alive.resume_skipped == [2]
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_transformers_callback_skips_the_bad_batch_and_names_its_sample(tmp_path):
    from test_integrations import EmbedsDataset, hf_train
    from nandoctor.integrations.transformers import NanDoctorCallback
    callback = NanDoctorCallback(out=tmp_path / "bundles", on_nonfinite="rollback", rollback={"every": 2})
    with quiet():
        hf_train(tmp_path, EmbedsDataset(bad_index=4 * 5 + 2), callback, max_steps=8)
    assert callback.watch.step_index == 8 and callback.watch.skipped_steps == 1
    [entry] = entries(tmp_path / "bundles")
    assert (entry["step"], entry["policy"], entry["samples"]) == (5, "rollback", [22])
    assert entry["window"] == {"from_step": 4, "to_step": 5}
    assert all(torch.isfinite(p).all() for p in callback.watch.model.parameters())


def test_nandoctor_run_takes_the_loss_module_per_sample(tmp_path):
    """The step called `nn.CrossEntropyLoss()`: the per-sample re-run uses it with reduction='none'."""
    script = Path(__file__).parent / "scripts" / "loss_module_nan_row.py"
    result = run_cli("run", "--on-nonfinite", "skip", "--out", tmp_path, "--format", "json", "--no-experiments", script)
    run = json.loads(result.stdout)["runs"][0]
    assert result.exit_code == 0 and run["status"] == "ok"
    [blame] = run["sample_blame"]
    assert blame["method"] == "CrossEntropyLoss(reduction='none')" and blame["statistic"] == "loss"
    assert [d["index"] for d in blame["dominant"]] == [21] and entries(tmp_path)[0]["samples"] == [21]
