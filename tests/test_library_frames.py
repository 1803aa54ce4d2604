"""Library frames are never the place to fix: a real Hugging Face model whose loss runs inside
transformers, through the public surfaces (`nandoctor scan` of a model file; the Trainer callback
and `nandoctor replay`). The finding names the user's line or the trainer's argument; the library
line stays in the evidence as detail."""
from __future__ import annotations

import json
import os
import textwrap
import warnings

import jsonschema
import pytest
import torch

import nandoctor
from conftest import json_of, run_cli
from test_formats import SCHEMA

pytest.importorskip("transformers")

LIBRARY_DIRS = ("site-packages", "dist-packages", f"{os.sep}nandoctor{os.sep}")

ALL_IGNORED_SOURCE = '''
import torch
from transformers import GPT2Config, GPT2LMHeadModel


def build_model():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                      bos_token_id=0, eos_token_id=0))


def get_batch(step):
    ids = torch.randint(0, 32, (4, 8))
    labels = ids.clone()
    if step == 1:
        labels = torch.full_like(ids, -100)         # a batch with nothing to predict
    return {"input_ids": ids, "labels": labels}, None
'''


def in_library(text) -> bool:
    return bool(text) and any(d in str(text) for d in LIBRARY_DIRS)


def assert_points_at_user_code(doc: dict) -> None:
    """No cause's place, no fix and no user_source points into an installed package or nandoctor."""
    event = doc["first_nonfinite"]
    assert not in_library(event.get("user_source")), event
    for cause in doc["causes"]:
        assert not in_library(cause["file"]) and not in_library(cause["source"]), cause
        assert not in_library(cause["fix"]), cause


def test_scan_of_an_hf_model_whose_batch_has_every_label_ignored(tmp_path):
    model = tmp_path / "model.py"
    model.write_text(textwrap.dedent(ALL_IGNORED_SOURCE))
    result = run_cli("scan", model, "-p", "32-true", "--steps", "3", "-f", "json")
    doc = json_of(result)
    jsonschema.validate(json.loads(json.dumps(doc, allow_nan=False)), SCHEMA)
    event = doc["first_nonfinite"]
    assert result.exit_code == 1 and event["step"] == 1
    assert "transformers" in event["source"]                 # where the op ran: the detail
    # No user frame was on the stack (nandoctor called the model): the origin names the user's line
    # that made the labels the library's loss read, through its pad/shift/contiguous copies.
    made = next(i for i, line in enumerate(ALL_IGNORED_SOURCE.splitlines(), 1) if "torch.full_like" in line)
    assert event["user_source"] == f"{model}:{made}" or event["user_source"].endswith(f"model.py:{made}"), event
    assert event["user_source_batch"] == "inputs['labels']", event
    top = doc["causes"][0]
    assert top["id"] == "empty-reduction", [c["id"] for c in doc["causes"]]
    assert any("32 of 32 labels" in e and "-100" in e for e in top["evidence"]), top["evidence"]
    assert top["file"] is None or top["file"].endswith("model.py")
    assert_points_at_user_code(doc)

    console = run_cli("scan", model, "-p", "32-true", "--steps", "3", "--no-experiments")
    assert "inside library code at" in console.stderr + console.stdout
    assert "the line that made inputs['labels']" in console.stderr + console.stdout


def _trainer_run(tmp_path, dataset, **args):
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
    from nandoctor.integrations.transformers import NanDoctorCallback
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=0, eos_token_id=0))
    targs = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=10, per_device_train_batch_size=4,
                              learning_rate=1e-3, report_to=[], save_strategy="no", logging_strategy="no",
                              use_cpu=True, dataloader_num_workers=0, seed=0, train_sampling_strategy="sequential",
                              **args)
    trainer = Trainer(model=model, args=targs, train_dataset=dataset,
                      callbacks=[NanDoctorCallback(out=tmp_path / "bundles")])
    with warnings.catch_warnings(), pytest.raises(nandoctor.NonFiniteError) as caught:
        warnings.simplefilter("ignore")
        trainer.train()
    return caught.value


class TokenDataset(torch.utils.data.Dataset):
    """Causal-LM items; items [ignored, ignored + 4) have every label -100 (one whole batch)."""

    def __init__(self, ignored=None, n=64):
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 32, (n, 8), generator=g)
        self.labels = self.ids.clone()
        if ignored is not None:
            self.labels[ignored:ignored + 4] = -100

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def replay_doc(bundle) -> dict:
    result = run_cli("replay", bundle, "--format", "json")
    doc = json_of(result)
    jsonschema.validate(json.loads(json.dumps(doc, allow_nan=False)), SCHEMA)
    assert result.exit_code == 1
    return doc


def test_trainer_batch_with_every_label_ignored_replays_as_empty_reduction_not_the_library_division(tmp_path):
    """Regression: reported as unstable-op 0/0 at transformers/loss/loss_utils.py:48 with a fix to
    edit that file. The Trainer divides the summed loss by num_items_in_batch, 0.0 / 0.0."""
    err = _trainer_run(tmp_path, TokenDataset(ignored=20))
    assert err.step == 5
    doc = replay_doc(err.bundle)
    event = doc["first_nonfinite"]
    assert event["op"] == "aten.div.Tensor" and "loss_utils.py" in event["source"]
    top = doc["causes"][0]
    assert top["id"] == "empty-reduction", [(c["id"], c["title"]) for c in doc["causes"]]
    text = " ".join(top["evidence"])
    assert "32 of 32 labels" in text and "-100" in text
    assert "loss_utils.py" in text                            # the library frame, kept as detail
    assert "unstable-op" not in [c["id"] for c in doc["causes"]]
    assert_points_at_user_code(doc)


def test_trainer_adam_epsilon_zero_is_named_as_the_trainer_argument(tmp_path):
    err = _trainer_run(tmp_path, TokenDataset(), adam_epsilon=0.0)
    doc = replay_doc(err.bundle)
    top = doc["causes"][0]
    assert top["id"] == "optimizer-eps", [c["id"] for c in doc["causes"]]
    assert "--adam_epsilon" in top["fix"] and "TrainingArguments(adam_epsilon=" in top["fix"]
    assert any("eps=0" in e for e in top["evidence"])
    assert_points_at_user_code(doc)
