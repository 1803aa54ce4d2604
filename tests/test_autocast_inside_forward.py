"""Autocast applied inside the model's own forward (Accelerate's `mixed_precision="bf16"`, and the
HF Trainer's `--bf16` through it: `model.forward = autocast(forward)`). The model's hooks run
outside that region; the watch must still record the precision the forward ran in, so that a
bundle is replayed under the same autocast (issue 18: "the watch records autocast's dtype from the
forward it saw"). `nandoctor run` is covered by sample_models/scripts/accelerate_bf16."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import nandoctor


def test_watch_records_bf16_autocast_that_the_prepared_forward_applies(tmp_path):
    accelerate = pytest.importorskip("accelerate")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerate.Accelerator(cpu=True, mixed_precision="bf16").prepare(model, optimizer)
    assert not torch.is_autocast_enabled("cpu")      # outside the forward: float32
    watch = nandoctor.watch(model, optimizer, out=tmp_path, warn=False)
    assert watch.precision == "32-true"
    for _ in range(2):
        loss = model(torch.randn(8, 4)).float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert watch.precision == "bf16-mixed"
    watch.close()


def test_a_float32_forward_stays_32_true(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    watch = nandoctor.watch(model, optimizer, out=tmp_path, warn=False)
    for _ in range(2):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert watch.precision == "32-true"
    watch.close()


def test_untouched_embedding_rows_are_no_second_moment_collapse(tmp_path):
    """Regression (bench round 2: accelerate's nlp_example, run_clm.py): a position table of 64 rows
    of which batches use 6 warned `adam-update-anomaly` at step 0 on a healthy run, because the
    rows no gradient reached (moments exactly 0) counted as below eps**2."""
    torch.manual_seed(0)

    class Positions(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(64, 8)
            self.head = nn.Linear(8, 1)

        def forward(self, positions):
            return self.head(self.table(positions))

    model = Positions()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    watch = nandoctor.watch(model, optimizer, out=tmp_path, warn=False, early_warnings={"every": 1},
                            spikes=False)
    for _ in range(3):
        loss = model(torch.arange(6).repeat(4, 1)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    watch.close()
    assert not [w for w in watch.early_warnings if w.statistic == "exp_avg_sq_collapse"], watch.early_warnings
