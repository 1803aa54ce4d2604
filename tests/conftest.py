"""Shared helpers: the CLI through typer's CliRunner, and cached scans of the sample models."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import nandoctor
from nandoctor.cli import app

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"

_scans: dict[tuple, Any] = {}


@pytest.fixture(autouse=True)
def fresh_distribution_checks():
    """torch.compile's first use turns off torch.distributions' argument checks process-wide
    (torch/_dynamo/eval_frame.py): each test starts as a fresh `python` would, with them on."""
    import torch
    torch.distributions.Distribution.set_default_validate_args(__debug__)
    yield


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state (mixed precision, accumulation steps) from the first
    `Accelerator(...)`: a script that a test runs in-process (`nandoctor run`/`replay --trust`
    through the CLI runner) must start as in a fresh `python`, not under a previous test's bf16."""
    yield
    import sys
    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState, PartialState
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        PartialState._reset_state()


def scan_sample(name: str, precisions: tuple[str, ...] | None = None, **kwargs: Any):
    """Scan sample_models/<name>.py once per argument set (scans are deterministic)."""
    key = (name, precisions, tuple(sorted(kwargs.items())))
    if key not in _scans:
        _scans[key] = nandoctor.scan(SAMPLES / f"{name}.py", precisions=list(precisions) if precisions else None,
                                     **kwargs)
    return _scans[key]


def run_cli(*args: str, cwd: Path | None = None):
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    import os
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(old)


def json_of(result) -> dict[str, Any]:
    return json.loads(result.stdout)


@pytest.fixture
def model_file(tmp_path: Path):
    """Write a model file from source text and return its path."""
    def write(source: str, name: str = "model.py") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return path
    return write


HEALTHY_SOURCE = """
import torch
from torch import nn

def build_model():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

def get_batch(step):
    x = torch.randn(16, 4)
    return x, (x[:, 0] > 0).long()
"""
