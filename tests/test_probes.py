"""The step's probe interface: every watcher sees the same calls, and one finiteness path decides.

Sessions are driven through `TrainingSession.run_step(step, *probes)`, the recorded run through
`nandoctor.api.scan`. Failures are made by real models (a loss that takes the log of a negative
number, a gradient through sqrt at 0, an optimizer step that writes NaN into the weights).
"""
from __future__ import annotations

import math
import textwrap

import pytest
import torch

from nandoctor.api import scan
from nandoctor.load.config import resolve_config
from nandoctor.load.model_file import load_model_file
from nandoctor.run.probes import FinitenessCheck, StepFacts, StepProbe
from nandoctor.run.recorder import Recorder, StepStats
from nandoctor.run.session import TrainingSession
from nandoctor.trace import Phase
from nandoctor.trace.vocab import Precision

HEALTHY = """
import torch
from torch import nn

def build_model():
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 3))

def get_batch(step):
    return torch.randn(12, 6), torch.randint(0, 3, (12,))
"""

# The loss turns NaN at step 2: the log of a negative mean.
LOSS_FAILS = """
import torch
from torch import nn

def build_model():
    return nn.Linear(4, 1)

def get_batch(step):
    return torch.randn(8, 4), torch.full((8, 1), 1.0 if step < 2 else -50.0)

def loss_fn(outputs, targets):
    return torch.log(targets.mean() + outputs.mean() * 0 + 1.0) + outputs.square().mean()
"""

# Finite loss, infinite gradient: d sqrt(x)/dx at x = 0, from step 1 on.
GRAD_FAILS = """
import torch
from torch import nn

def build_model():
    return nn.Linear(4, 4)

def get_batch(step):
    return torch.randn(8, 4), torch.zeros(8)

def loss_fn(outputs, targets):
    return torch.sqrt((outputs * 0.0).square().sum(dim=1)).mean() + outputs.mean() * 1e-3
"""

# Finite loss and gradients; the optimizer step writes NaN into the weights at step 1.
PARAMS_FAIL = """
import torch
from torch import nn

class Poisoning(torch.optim.SGD):
    def step(self, closure=None):
        super().step(closure)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))

def build_model():
    return nn.Linear(4, 2)

def get_batch(step):
    return torch.randn(8, 4), torch.randn(8, 2)

def build_optimizer(params):
    return Poisoning(params, lr=0.01)
"""


def _session(tmp_path, source: str, name: str = "model.py") -> TrainingSession:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    config = resolve_config(None, cwd=tmp_path).values
    return TrainingSession(load_model_file(path), config, Precision.FP32, torch.device("cpu"))


def _run(tmp_path, source: str, recorded: bool, steps: int = 4):
    """(step, failure, nonfinite gradients) of each step until the first failure."""
    session = _session(tmp_path, source)
    probes = [Recorder(session.model).attach()] if recorded else []
    seen = []
    try:
        for step in range(steps):
            result = session.run_step(step, *probes)
            seen.append((step, result.failure, result.record.nonfinite_grads))
            if result.failure:
                break
    finally:
        for probe in probes:
            probe.detach()
    return seen


class PhaseLog(StepProbe):
    """A probe that writes down what the step told it."""

    def __init__(self):
        self.calls: list[str] = []

    def on_phase(self, phase: Phase) -> None:
        self.calls.append(phase.value)

    def after_backward(self) -> None:
        self.calls.append("after_backward")

    def before_optimizer_step(self) -> None:
        self.calls.append("before_optimizer_step")

    def after_optimizer_step(self) -> None:
        self.calls.append("after_optimizer_step")

    def finish(self, loss, grad_scale=1.0):
        self.calls.append("finish")
        return None


def test_a_probe_sees_every_phase_in_order(tmp_path):
    session = _session(tmp_path, HEALTHY)
    log = PhaseLog()
    result = session.run_step(0, log)
    assert log.calls == ["data", "forward", "loss", "backward", "optimizer", "after_backward",
                         "before_optimizer_step", "after_optimizer_step", "finish"]
    assert result.failure is None and isinstance(result.facts, StepFacts)


def test_unrecorded_facts_equal_the_recorded_ones(tmp_path):
    plain = _session(tmp_path, HEALTHY)
    recorded = _session(tmp_path, HEALTHY)
    recorder = Recorder(recorded.model).attach()
    try:
        for step in range(5):
            a = plain.run_step(step).facts
            b = recorded.run_step(step, recorder).stats
            assert isinstance(b, StepStats) and not isinstance(a, StepStats)
            assert a.loss == b.loss and a.total_grad_norm == b.total_grad_norm
            assert a.param_grad_norm == b.param_grad_norm
            assert a.param_grad_max == b.param_grad_max
            assert a.param_norm == b.param_norm
    finally:
        recorder.detach()


def test_facts_are_what_the_scan_recorded(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(HEALTHY))
    report = scan(path, steps=4, precisions=["32-true"], experiments=False, cwd=tmp_path)
    run = report.trace.runs[0]
    session = _session(tmp_path, HEALTHY, name="again.py")
    for record in run.steps:
        facts = session.run_step(record.step).facts
        assert facts.loss == record.loss
        assert facts.total_grad_norm == record.grad_norm
    # The per-parameter series of the scan are the recorder's StepFacts.
    session = _session(tmp_path, HEALTHY, name="third.py")
    norms = [session.run_step(s.step).facts.param_norm for s in run.steps]
    for i, param in enumerate(run.params):
        assert param.series["norm"] == [n[i] for n in norms]


@pytest.mark.parametrize("source, failure, step", [
    (LOSS_FAILS, "loss", 2),
    (GRAD_FAILS, "gradients", 0),
    (PARAMS_FAIL, "parameters", 1),
])
def test_the_same_failure_with_and_without_the_recorder(tmp_path, source, failure, step):
    plain = _run(tmp_path, source, recorded=False)
    recorded = _run(tmp_path, source, recorded=True)
    assert plain == recorded
    assert plain[-1][:2] == (step, failure)
    if failure == "gradients":
        assert plain[-1][2], "the non-finite gradients are named"


def test_a_finiteness_check_reports_the_failing_parameter(tmp_path):
    session = _session(tmp_path, PARAMS_FAIL)
    check = FinitenessCheck(session.params)
    session.run_step(0, check)
    result = session.run_step(1, check)
    assert result.facts.loss_finite and result.facts.grads_finite
    assert not result.facts.params_finite
    bad = [math.isfinite(n) for n in result.facts.param_norm]
    assert bad == [False, True]      # the weight, not the bias


def test_max_abs_of_gradients_matches_the_reference():
    from nandoctor.run import stats
    tensors = [torch.tensor([1.0, -5.0]), torch.tensor([float("nan"), 1.0]), torch.tensor([float("-inf")]),
               torch.zeros(0), torch.tensor([2.0, 3.0], dtype=torch.float16), torch.tensor([1e300], dtype=torch.float64)]
    got = stats.foreach_max_abs(tensors).tolist()
    assert got[0] == 5.0 and math.isnan(got[1]) and got[2] == math.inf
    assert got[3] == 0.0 and got[4] == 3.0 and got[5] == 1e300


def test_zero_counts_match_count_nonzero():
    from nandoctor.run import stats
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        x = torch.tensor([0.0, -0.0, 1.0, float("nan"), float("inf"), -2.0, 1e-40, 0.0], dtype=dtype)
        views = [x, x[::2], x.reshape(2, 4).t()]
        expected = [float(t.numel() - int(torch.count_nonzero(t))) for t in views]
        assert stats.zero_counts(views).tolist() == expected
        assert [stats.tensor_row(t)[2].item() for t in views] == [t.numel() - z for t, z in zip(views, expected)]
