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
