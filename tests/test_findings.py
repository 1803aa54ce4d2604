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


HANDWRITTEN_ADAMW = '''
import torch
from torch import nn


class AdamW(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = m / (1 - beta1 ** state["step"])
                v_hat = v / (1 - beta2 ** state["step"])
                p.add_(-group["lr"] * m_hat / (v_hat.sqrt() + group["eps"]))
                state["step"] += 1


def build_model():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


def get_batch(step):
    x = torch.randn(16, 8)
    return x, x.sum(dim=1, keepdim=True)


def build_optimizer(params):
    return AdamW(params, lr=1e-3)
'''


def test_a_division_by_a_zero_bias_correction_in_the_optimizer_is_an_unstable_op(tmp_path):
    doc = nandoctor.scan(write(tmp_path, HANDWRITTEN_ADAMW), precisions=["32-true"], steps=3, experiments=True).to_dict()
    top = doc["causes"][0]
    assert top["id"] == "unstable-op" and top["mechanism"] == "pole" and "optimizer" in top["title"], top
    assert "1 - beta ** step" in top["fix"] and "count steps from 1" in top["fix"]
    # eps 1e-8 is not 0 in float32: nothing may say it is.
    assert not any(c["id"] == "optimizer-eps" for c in doc["causes"]), [c["title"] for c in doc["causes"]]


NEGATIVE_SCHEDULE = '''
import torch
from torch import nn

TOTAL = 6


def build_model():
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))


def get_batch(step):
    x = torch.randn(64, 8)
    return x, x.sum(dim=1, keepdim=True)


def build_optimizer(params):
    return torch.optim.SGD(params, lr=0.5)


def build_scheduler(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / TOTAL)
'''


def test_a_negative_learning_rate_is_a_schedule_bug_at_the_schedule_line(tmp_path):
    doc = nandoctor.scan(write(tmp_path, NEGATIVE_SCHEDULE), precisions=["32-true"], steps=30, experiments=False).to_dict()
    top = doc["causes"][0]
    assert top["id"] == "high-lr" and "schedule goes negative" in top["title"], top
    assert top["line"] == 22 and "clamp it at 0" in top["fix"]
    assert "lower the learning rate" not in top["fix"]
