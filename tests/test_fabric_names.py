"""`nandoctor run` of a Lightning Fabric script: names are the user's module paths.

fabric.setup(model) wraps the model in a _FabricModule that holds it as `_forward_module`; the
report must name the user's modules (`0`, not `_forward_module.0`), as it does for torch.compile."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning.fabric")

ROOT = Path(__file__).resolve().parents[1]

FABRIC_SCRIPT = '''
import torch
from lightning.fabric import Fabric

fabric = Fabric(accelerator="cpu", devices=1)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
model, optimizer = fabric.setup(model, optimizer)
for step in range(6):
    x = torch.randn(8, 4)
    if step == 3:
        x[2, 1] = float("nan")   # one corrupt record
    loss = model(x).pow(2).mean()
    optimizer.zero_grad()
    fabric.backward(loss)
    optimizer.step()
'''


def test_fabric_script_reports_the_users_module_names(tmp_path):
    (tmp_path / "train.py").write_text(FABRIC_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "nandoctor", "run", "--no-experiments", "--format", "json",
                           "-o", "report.json", "train.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    first = report["first_nonfinite"]
    assert report["causes"][0]["id"] == "data-nonfinite"
    assert first["step"] == 3
    assert first["module"] == "0", first
