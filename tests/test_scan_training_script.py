"""`nandoctor scan` on an ordinary training script: refused before import (exit 2, one paragraph
that names `nandoctor run` and what a model file needs), and a model file always sees
`sys.argv == [model_file]`, so its own argparse never reads nandoctor's flags.

Regression: `nandoctor scan train.py` imported the script; its module-level argparse printed
its usage under the name "nandoctor", and the scan then said "Fix the file so that `python
train.py` imports cleanly".
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import HEALTHY_SOURCE, ROOT, run_cli

ARGPARSE_MAIN = """
import argparse
import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, required=True)
args = parser.parse_args()


def main():
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    for _ in range(args.epochs):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


if __name__ == "__main__":
    main()
"""

MODULE_LEVEL_LOOP = """
import torch
model = torch.nn.Linear(4, 2)
opt = torch.optim.Adam(model.parameters())
for step in range(1000):
    opt.zero_grad()
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
"""

HF_TRAINER = """
from transformers import Trainer, TrainingArguments

def build_model():
    from transformers import AutoModel
    return AutoModel.from_pretrained("bert-base-uncased")

trainer = Trainer(model=build_model(), args=TrainingArguments("out"))
trainer.train()
"""

LIGHTNING = """
import lightning as L

class Module(L.LightningModule):
    pass

L.Trainer(max_epochs=1).fit(Module())
"""


@pytest.mark.parametrize("source, signs", [
    (ARGPARSE_MAIN, ["argparse at line 2", '`if __name__ == "__main__":` block at line 21', "`.backward()`",
                     "optimizer `.step()`"]),
    (MODULE_LEVEL_LOOP, ["`.backward()` call at line 7", "optimizer `.step()` call at line 8"]),
    (HF_TRAINER, ["`Trainer(...)` with `.fit()`/`.train()` at line 9"]),
    (LIGHTNING, ["`Trainer(...)` with `.fit()`/`.train()` at line 7"]),
], ids=["argparse-main", "module-level-loop", "hf-trainer", "lightning"])
def test_a_training_script_is_refused_before_import_with_the_command_to_use(tmp_path, source, signs):
    script = tmp_path / "train.py"
    marker = tmp_path / "imported"
    # Were the script imported, this first line would leave a file behind.
    script.write_text(f"open({str(marker)!r}, 'w').close()\n" + textwrap.dedent(source).lstrip("\n"))
    result = run_cli("scan", "train.py", "--steps", "1", cwd=tmp_path)
    assert result.exit_code == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert "train.py is a training script, not a model file" in message
    assert "`nandoctor run train.py [ARGS...]`" in message
    assert "build_model() -> torch.nn.Module and get_batch(step) -> (inputs, targets)" in message
    for sign in signs:     # line numbers count the marker line written above the source
        assert sign in message, message
    assert "usage:" not in result.stderr + result.stdout and "Traceback" not in result.stderr
    assert not marker.exists(), "the script was imported"
    assert result.stderr.count("\n") <= 1, "one paragraph"


def test_a_model_file_with_a_main_block_and_argparse_is_still_scanned(model_file):
    source = HEALTHY_SOURCE + textwrap.dedent("""
        import argparse

        if __name__ == "__main__":
            argparse.ArgumentParser().parse_args()
            build_model()
        """)
    result = run_cli("scan", model_file(source), "--steps", "2", "-p", "fp32", "--no-experiments", "-q")
    assert result.exit_code == 0, result.stderr


def test_a_file_that_stars_imports_its_functions_is_not_judged_by_its_syntax(tmp_path):
    (tmp_path / "shared_model.py").write_text(textwrap.dedent(HEALTHY_SOURCE))
    script = tmp_path / "model.py"
    script.write_text("from shared_model import *\n\nif __name__ == '__main__':\n    build_model()\n")
    result = run_cli("scan", script, "--steps", "2", "-p", "fp32", "--no-experiments", "-q")
    assert result.exit_code == 0, result.stderr


# argparse at module level, reading sys.argv as it is while imported and while build_model runs.
ARGV_READER = HEALTHY_SOURCE + """
import argparse
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--hidden", type=int, default=16)
args = parser.parse_args()
ARGV_AT_IMPORT = list(sys.argv)
_build_model = build_model


def build_model():
    if sys.argv != ARGV_AT_IMPORT or sys.argv != [__file__]:
        raise RuntimeError(f"sys.argv is {sys.argv}, at import it was {ARGV_AT_IMPORT}")
    return _build_model()
"""


def test_a_model_file_sees_only_its_own_name_in_sys_argv(tmp_path):
    model = tmp_path / "model.py"
    model.write_text(textwrap.dedent(ARGV_READER))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(ROOT)}
    # A real process: nandoctor's own flags are in the interpreter's argv, where argparse looks.
    result = subprocess.run([sys.executable, "-m", "nandoctor", "scan", str(model), "--steps", "2", "-p", "fp32",
                             "--no-experiments", "--format", "json"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage:" not in result.stderr and "unrecognized arguments" not in result.stderr
    before = list(sys.argv)
    run_cli("scan", model, "--steps", "1", "-p", "fp32", "--no-experiments", "-q")
    assert sys.argv == before, "the caller's argv comes back"
