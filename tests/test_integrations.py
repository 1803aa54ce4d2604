"""NanDoctorCallback inside real Lightning and Hugging Face trainers: the bundle it writes and
its replay through the CLI."""
from __future__ import annotations

import importlib
import os
import subprocess
import json
import sys
import textwrap
import warnings
from pathlib import Path

import jsonschema
import pytest
import torch

import nandoctor
from conftest import json_of, run_cli
from test_formats import SCHEMA

LIT_SOURCE = '''
import lightning as L
import torch
from torch import nn


class LitRegressor(L.LightningModule):
    def __init__(self, hidden=16, lr=0.01):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        scale = torch.sqrt(x[:, :1] + 5.0)                   # NaN when x < -5
        loss = nn.functional.mse_loss(self.net(x) * scale, y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
'''
SQRT_LINE = next(i for i, l in enumerate(textwrap.dedent(LIT_SOURCE).splitlines(), 1) if "torch.sqrt(" in l)


def lightning_data(bad_index=None, n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    if bad_index is not None:
        x[bad_index, 0] = -7.0
    y = torch.randn(n, 1, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4, shuffle=False)


def lit_module(tmp_path, name, source=LIT_SOURCE):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(tmp_path))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))


def fit(tmp_path, module, loader, **trainer_options):
    import lightning as L
    from nandoctor.integrations.lightning import NanDoctorCallback
    callback = NanDoctorCallback(out=tmp_path / "bundles")
    trainer = L.Trainer(max_steps=12, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                        default_root_dir=tmp_path, **trainer_options)
    torch.manual_seed(0)
    model = module.LitRegressor(hidden=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader)
    return callback, model


def replay_json(bundle, *args):
    result = run_cli("replay", bundle, *args, "--format", "json", "--no-experiments")
    doc = json_of(result)
    jsonschema.validate(json.loads(json.dumps(doc, allow_nan=False)), SCHEMA)
    return result, doc


def test_lightning_nan_is_bundled_and_replayed_to_the_training_step_line(tmp_path):
    module = lit_module(tmp_path, "lit_sqrt")
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        fit(tmp_path, module, lightning_data(bad_index=4 * 6 + 1))      # batch 6
    err = caught.value
    assert err.step == 6 and "loss" in err.what
    manifest = json.loads((err.bundle / "manifest.json").read_text())
    assert manifest["rebuild"]["class"] == "lit_sqrt:LitRegressor" and manifest["rebuild"]["hparams"]["hidden"] == 8

    refused = run_cli("replay", err.bundle)                  # importing the user's module needs --trust
    assert refused.exit_code == 2 and "--trust" in refused.stderr

    result, doc = replay_json(err.bundle, "--trust")
    event = doc["first_nonfinite"]
    assert (event["step"], event["phase"], event["op"]) == (6, "forward", "aten.sqrt.default")
    assert event["source"].endswith(f"lit_sqrt.py:{SQRT_LINE}") and result.exit_code == 1


def test_lightning_gradient_accumulation_and_a_healthy_run(tmp_path):
    module = lit_module(tmp_path, "lit_accum")
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        fit(tmp_path, module, lightning_data(bad_index=4 * 7), accumulate_grad_batches=2)   # batch 7: step 3
    err = caught.value
    manifest = json.loads((err.bundle / "manifest.json").read_text())
    assert err.step == 3 and manifest["micro_batches"] == 2
    callback, _ = fit(tmp_path / "healthy", module, lightning_data())
    assert callback.watch.step_index == 12 and not (tmp_path / "healthy" / "bundles").exists()
    assert sum(len(m._forward_hooks) for m in callback.watch.model.modules()) == 0


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                      bos_token_id=0, eos_token_id=0))


class EmbedsDataset(torch.utils.data.Dataset):
    """Keyword inputs as a Trainer collates them; one item carries a NaN embedding."""

    def __init__(self, bad_index=None, n=64):
        g = torch.Generator().manual_seed(1)
        self.embeds = torch.randn(n, 8, 16, generator=g) * 0.1
        self.labels = torch.randint(0, 32, (n, 8), generator=g)
        if bad_index is not None:
            self.embeds[bad_index, 3, 5] = float("nan")

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"inputs_embeds": self.embeds[i], "labels": self.labels[i]}


def hf_callback(tmp_path, policy="raise"):
    from nandoctor.integrations.transformers import NanDoctorCallback
    return NanDoctorCallback(out=tmp_path / "bundles", on_nonfinite=policy)


def hf_train(tmp_path, dataset, callback, **args):
    from transformers import Trainer, TrainingArguments
    targs = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=args.pop("max_steps", 10),
                              per_device_train_batch_size=4, learning_rate=1e-3, report_to=[], save_strategy="no",
                              logging_strategy="no", use_cpu=True, dataloader_num_workers=0, seed=0,
                              train_sampling_strategy="sequential", **args)
    trainer = Trainer(model=tiny_gpt2(), args=targs, train_dataset=dataset, callbacks=[callback])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        trainer.train()
    return callback


def test_transformers_nan_batch_is_replayed_from_the_config_without_trust(tmp_path):
    callback = hf_callback(tmp_path)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        hf_train(tmp_path, EmbedsDataset(bad_index=4 * 5 + 2), callback, gradient_accumulation_steps=1)
    err = caught.value
    assert err.step == 5 and "batch" in err.what
    model = callback.watch.model                    # raising closed the watch and removed every hook
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    manifest = json.loads((err.bundle / "manifest.json").read_text())
    assert manifest["rebuild"]["class"] == "GPT2LMHeadModel" and manifest["rebuild"]["config"]["n_embd"] == 16
    result, doc = replay_json(err.bundle)
    event = doc["first_nonfinite"]
    assert (event["step"], event["phase"]) == (5, "data") and "inputs_embeds" in event["tensor"]
    assert result.exit_code == 1


def test_transformers_accumulation_warn_policy_and_the_nan_filter_warning(tmp_path):
    with pytest.warns(nandoctor.NonFiniteWarning) as caught:
        callback = hf_train(tmp_path, EmbedsDataset(bad_index=4 * 7), hf_callback(tmp_path, "warn"),
                            gradient_accumulation_steps=2, max_steps=6)
    manifest = json.loads(next((tmp_path / "bundles").iterdir()).joinpath("manifest.json").read_text())
    assert manifest["step"] == 3 and manifest["micro_batches"] == 2
    assert any("logging_nan_inf_filter" in str(w.message) for w in caught)
    assert callback.watch.step_index == 6


def test_callback_options_are_checked_when_the_callback_is_built():
    """A typo fails at construction, not at the trainer's first step; an option the trainer would
    otherwise supply (grad_clip, precision) is accepted and kept."""
    from nandoctor.integrations.transformers import NanDoctorCallback as HFCallback
    pytest.importorskip("lightning")
    from nandoctor.integrations.lightning import NanDoctorCallback as LitCallback
    for callback in (HFCallback, LitCallback):
        assert callback(grad_clip=0.5, precision="bf16-mixed").options["grad_clip"] == 0.5
        with pytest.raises(TypeError, match="precison"):
            callback(precison="bf16-mixed")
        with pytest.raises(TypeError, match="notify"):
            callback(notify=print)


SCRIPT_MAIN = '''
import os
import sys
import warnings

import lightning as L
import torch

import nandoctor
from nandoctor.integrations.lightning import NanDoctorCallback

with open(os.environ["RUNS_LOG"], "a") as log:          # counts how often the training block ran
    log.write(__name__ + "\\n")

if __name__ == "__main__":
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)
    x[4 * 3 + 2, 0] = -7.0                                # batch 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4, shuffle=False)
    trainer = L.Trainer(max_steps=8, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[NanDoctorCallback(out=sys.argv[1])])
    torch.manual_seed(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(LitRegressor(hidden=8), loader)
    except nandoctor.NonFiniteError as err:
        print("BUNDLE", err.bundle)
'''


def test_a_lightning_module_defined_in_the_training_script_replays_without_rerunning_it(tmp_path):
    """`python train.py` makes the class `__main__:LitRegressor`; the replay loads the script by
    path under another name, so its `if __name__ == "__main__":` training block does not run again."""
    script = tmp_path / "train.py"
    source = textwrap.dedent(LIT_SOURCE) + textwrap.dedent(SCRIPT_MAIN)
    script.write_text(source)
    log = tmp_path / "runs.log"
    env = {**os.environ, "RUNS_LOG": str(log), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "bundles")], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    bundle = Path(next(line.split(" ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("BUNDLE")))
    assert json.loads((bundle / "manifest.json").read_text())["rebuild"]["class"] == "__main__:LitRegressor"
    os.environ["RUNS_LOG"] = str(log)
    try:
        result, doc = replay_json(bundle, "--trust")
    finally:
        del os.environ["RUNS_LOG"]
    event = doc["first_nonfinite"]
    assert (event["step"], event["phase"], event["op"]) == (3, "forward", "aten.sqrt.default")
    assert event["source"].endswith(f"train.py:{SQRT_LINE}") and result.exit_code == 1
    assert log.read_text().split() == ["__main__", "nandoctor_replayed_script_train"]


def test_a_lightning_module_without_save_hyperparameters_replays_or_says_what_to_add(tmp_path):
    """The arguments a module kept as attributes of the same name rebuild it; the ones it did not
    keep are named, with the line to add, instead of a TypeError from its __init__."""
    kept = LIT_SOURCE.replace("        self.save_hyperparameters()\n",
                              "        self.hidden, self.lr = hidden, lr\n").replace("self.hparams.lr", "self.lr") \
                     .replace("def __init__(self, hidden=16, lr=0.01):", "def __init__(self, hidden, lr=0.01):")
    module = lit_module(tmp_path, "lit_kept", kept)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        fit(tmp_path, module, lightning_data(bad_index=4 * 6 + 1))
    manifest = json.loads((caught.value.bundle / "manifest.json").read_text())
    assert manifest["rebuild"]["hparams"] == {} and manifest["rebuild"]["init_args"]["hidden"] == 8
    result, doc = replay_json(caught.value.bundle, "--trust")
    assert doc["first_nonfinite"]["op"] == "aten.sqrt.default" and result.exit_code == 1

    lost = kept.replace("        self.hidden, self.lr = hidden, lr\n", "        self.lr = lr\n")
    module = lit_module(tmp_path, "lit_lost", lost)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        fit(tmp_path / "lost", module, lightning_data(bad_index=4 * 6 + 1))
    refused = run_cli("replay", caught.value.bundle, "--trust")
    assert refused.exit_code == 2
    assert "needs hidden" in refused.stderr and "save_hyperparameters()" in refused.stderr
