"""Where the first non-finite value was born, attributed to what the user wrote: the public call
around a decomposed op, the 0-dim op behind a NaN that went through `.item()` / `float()`, the
consumer of a deliberate -inf mask, and a replay that reproduces what the recorded run saw."""
from __future__ import annotations

from pathlib import Path

import nandoctor
from nandoctor.trace import Trace

COMMON = """
import math
import torch
from torch import nn

def get_batch(step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 6, generator=g), torch.randint(3, 5, (8,), generator=g)
"""


def origin(path: Path, steps: int = 3, precision: str = "32-true") -> dict:
    report = nandoctor.scan(path, precisions=[precision], steps=steps, experiments=False)
    doc = report.to_dict()
    assert doc["verdict"] == "fail"
    event = doc["first_nonfinite"]
    assert event is not None
    return event


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def where(location: dict | str | None) -> int | None:
    if location is None:
        return None
    if isinstance(location, dict):
        return location["line"]
    return int(location.rsplit(":", 1)[1])


def test_origin_inside_a_decomposition_is_reported_at_the_public_call(model_file):
    path = model_file(COMMON + """
def build_model():
    return nn.Linear(6, 3)

def loss_fn(out, y):
    cov = torch.diag(torch.tensor([1.0, 1.0, -1.0])) + 0 * out.mean()
    return torch.logdet(cov) + out.pow(2).mean()
""")
    event = origin(path)
    assert event["call"] == "torch.logdet"
    assert event["op"].startswith("aten.")           # the aten op stays as detail
    assert where(event["source"]) == line_of(path, "torch.logdet(cov)")


def test_scalar_argument_is_recorded_in_the_inputs(model_file):
    path = model_file(COMMON + """
def build_model():
    return nn.Linear(6, 3)

def loss_fn(out, y):
    return torch.add(out, out.detach(), alpha=math.inf).mean()
""")
    event = origin(path)
    assert event["op"] == "aten.add.Tensor"
    alpha = next(i for i in event["inputs"] if i["name"] == "alpha")
    assert alpha["value"] == "Infinity"
    assert event["scalar_source"] is None


def test_nan_through_float_of_a_zero_division_is_traced_to_the_division(model_file):
    path = model_file(COMMON + """
def build_model():
    return nn.Linear(6, 3)

def loss_fn(out, y):
    hard = (y > 10).sum()
    ratio = float(hard / hard)
    return torch.add(out.pow(2).mean(), out.mean(), alpha=ratio)
""")
    event = origin(path)
    division = line_of(path, "float(hard / hard)")
    assert event["op"] == "aten.div.Tensor" and where(event["source"]) == division
    assert event["scalar_source"]["op"] == "aten.div.Tensor"
    assert where(event["scalar_source"]["source"]) == division


def test_nan_through_item_is_traced_to_the_zero_dim_op(model_file):
    path = model_file(COMMON + """
def build_model():
    return nn.Linear(6, 3)

def loss_fn(out, y):
    empty = out[y > 10]
    weight = empty.mean().item()
    return weight * out.pow(2).mean()
""")
    event = origin(path)
    assert event["op"] == "aten.mean.default"
    assert where(event["source"]) == line_of(path, "empty.mean().item()")
    assert event["scalar_source"]["op"] == "aten.mean.default"


def test_index_assigned_mask_is_not_the_origin_its_smoothing_consumer_is(model_file):
    path = model_file(COMMON + """
class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(6, 5)

    def forward(self, x):
        logits = self.net(x)
        logits[:, [0, 1]] = float("-inf")
        return logits

def build_model():
    return Tagger()

def loss_fn(logits, y):
    return nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
""")
    event = origin(path)
    assert event["phase"] == "loss" and event["kind"] == "inf"
    assert event["call"] == "torch.nn.functional.cross_entropy"
    assert where(event["source"]) == line_of(path, "label_smoothing=0.1")
    assert event["masked_input"] is True and event["inputs"][0]["masked"] is True
    assert where(event["mask_source"]["source"]) == line_of(path, 'logits[:, [0, 1]] = float("-inf")')


def test_where_mask_consumed_by_softmax_over_a_fully_masked_row(model_file):
    path = model_file(COMMON + """
class Pool(nn.Module):
    def __init__(self):
        super().__init__()
        self.score = nn.Linear(6, 4)

    def forward(self, x):
        scores = self.score(x)
        keep = torch.ones_like(scores, dtype=torch.bool)
        keep[0] = False
        scores = torch.where(keep, scores, float("-inf"))
        return torch.softmax(scores, dim=-1)

def build_model():
    return Pool()

def loss_fn(p, y):
    return -(p[:, 0] + 1).log().mean()
""")
    event = origin(path)
    assert event["op"] == "aten._softmax.default" and event["kind"] == "nan"
    assert where(event["source"]) == line_of(path, "torch.softmax(scores")
    assert event["masked_input"] is True
    assert where(event["mask_source"]["source"]) == line_of(path, "torch.where(keep")


def test_rnn_whose_parameters_outgrow_their_norm_is_reproduced_not_called_transient(model_file):
    """Bug: the recorded run counts parameters whose L2 norm overflows as non-finite, while the
    replay (no recorder) checked max |x|: a ReLU RNN exploding at step 0 (loss ~1e22, values still
    finite) was replayed "finite" and called nonreproducible. The replay now applies the same
    test, runs the step with and without tracing, and traces on to the first real non-finite op."""
    path = model_file("""
import torch
from torch import nn

class Forecaster(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(4, 32, nonlinearity="relu", batch_first=True)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(torch.eye(32) * 1.8)
        self.out = nn.Linear(32, 1)

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.out(h[:, -1])

def build_model():
    return Forecaster()

def get_batch(step):
    x = torch.rand(8, 50, 4)
    return x, x[:, -1, :1]

def build_optimizer(params):
    return torch.optim.SGD(params, lr=0.01)
""")
    report = nandoctor.scan(path, precisions=["32-true"], steps=3, experiments=False)
    doc = report.to_dict()
    run = doc["runs"][0]
    assert run["losses"][0] > 1e15          # exploded at step 0 without a single non-finite value
    event = doc["first_nonfinite"]
    assert event["reproduced"] is True
    assert event["replay_traced"] is True and event["replay_untraced"] is True
    assert event["phase"] == "forward" and event["module"] == "rnn"
    assert where(event["source"]) == line_of(path, "h, _ = self.rnn(x)")
    assert "nonreproducible" not in [c["id"] for c in doc["causes"]]


def test_pure_fp16_scan_adds_a_float32_reference_run_of_the_same_steps(model_file):
    path = model_file(COMMON + """
def build_model():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 5))
""")
    report = nandoctor.scan(path, precisions=["16-true"], steps=4, experiments=False)
    trace = report.trace
    assert [r.precision for r in trace.runs] == ["16-true"]
    (reference,) = trace.reference_runs
    assert reference.precision == "32-true" and reference.steps_run == trace.runs[0].steps_run == 4
    zero_shares = [p.series["grad_zero_frac"][0] for p in reference.params]
    assert all(share is not None for share in zero_shares)
    assert Trace.from_dict(trace.to_dict()).reference_runs[0].precision == "32-true"
    both = nandoctor.scan(path, precisions=["32-true", "16-true"], steps=2, experiments=False)
    assert both.trace.reference_runs == []


def test_nonreproducible_only_when_both_replays_stay_finite(model_file):
    # The loss is NaN on its second call only: the recorded step 1 fails, and neither the traced
    # nor the untraced replay of step 1 (the loss's later calls) does.
    path = model_file(COMMON + """
CALLS = [0]

def build_model():
    return nn.Linear(6, 3)

def loss_fn(out, y):
    CALLS[0] += 1
    return out.pow(2).mean() * (math.nan if CALLS[0] == 2 else 1.0)
""")
    report = nandoctor.scan(path, precisions=["32-true"], steps=3, experiments=False)
    event = report.to_dict()["first_nonfinite"]
    assert event["step"] == 1
    assert (event["reproduced"], event["replay_traced"], event["replay_untraced"]) == (False, False, False)
    assert "nonreproducible" in [c["id"] for c in report.to_dict()["causes"]]


REGRESSION = """
import torch
from torch import nn

def get_batch(step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
"""


def test_a_selection_with_no_elements_is_no_mask_and_its_mean_is_an_empty_reduction(model_file):
    path = model_file(REGRESSION + """
def loss_fn(out, y):
    return (out - y).pow(2).mean() + (out[y > 100] ** 2).mean()

def build_model():
    return nn.Linear(6, 3)
""")
    report = nandoctor.scan(path, precisions=["32-true"], steps=2, experiments=False)
    event = report.to_dict()["first_nonfinite"]
    assert event["op"] == "aten.mean.default" and event["inputs"][0]["shape"] == [0]
    assert event["masked_input"] is False and event["inputs"][0]["masked"] is False
    assert report.causes[0].id == "empty-reduction"


def test_the_guard_that_dropped_a_forward_inf_is_recorded(model_file):
    path = model_file(REGRESSION + """
class LogFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(6))
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(x) * self.scale
        h = torch.where(h > 0, torch.log(h), torch.zeros_like(h))
        return self.out(h)

def build_model():
    return LogFeatures()
""")
    report = nandoctor.scan(path, precisions=["32-true"], steps=2, experiments=False)
    event = report.to_dict()["first_nonfinite"]
    guard = line_of(path, "torch.where(h > 0")
    assert (event["phase"], event["op"], event["surfaced_in"]) == ("forward", "aten.log.default", "gradients")
    assert event["dropped_by"]["op"] == "aten.where.self" and where(event["dropped_by"]["source"]) == guard
    assert report.causes[0].id == "grad-singularity" and "double where" in report.causes[0].fix


def test_an_infinite_learning_rate_is_traced_to_the_schedule_line_that_made_it(model_file):
    """The lr of step 2 is 1 / 0: the origin is the schedule's division, and the step's recorded
    lr is the one its update used (not the next step's)."""
    path = model_file(REGRESSION + """
def build_model():
    return nn.Linear(6, 3)

def factor(step):
    scale = 1.0 / torch.tensor(float(2 - step))
    return float(scale)

def build_scheduler(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
""")
    report = nandoctor.scan(path, precisions=["32-true"], steps=4, experiments=False)
    doc = report.to_dict()
    event = doc["first_nonfinite"]
    division = line_of(path, "scale = 1.0 / torch.tensor")
    assert (event["phase"], event["step"]) == ("optimizer", 2)
    assert where(event["user_source"]) == division
    assert doc["runs"][0]["lrs"][:2] == [0.0005, 0.001] and doc["runs"][0]["lrs"][2] == "Infinity"
    top = report.causes[0]
    assert top.id == "high-lr" and top.source is not None and top.source.line == division
    assert "Inf" in top.title


ATTENTION_BIAS = COMMON + """
class Attend(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.q = nn.Linear(6, 6)
        self.scale = scale

    def forward(self, x):
        q = self.q(x).view(2, 4, 6) * self.scale
        bias = torch.zeros(2, 1, 4)
        bias = bias.masked_fill(torch.tensor([True, False]).view(2, 1, 1), float("-inf"))
        scores = torch.baddbmm(bias, q, q.abs().transpose(1, 2))
        return torch.softmax(scores, dim=-1).reshape(8, 4)

def build_model():
    return Attend(SCALE)

def loss_fn(p, y):
    return p.square().mean()
"""


def test_a_mask_added_as_the_bias_of_baddbmm_is_carried_to_the_softmax_that_makes_nan(model_file):
    """Bug: baddbmm(mask, q, k) was named the origin because it accumulates; the -inf of its output
    sits exactly where the added mask held it, so it is inherited, and the birth is the softmax over
    the fully masked rows (pytorch issue 40932, nn.MultiheadAttention with key_padding_mask)."""
    path = model_file(ATTENTION_BIAS.replace("SCALE", "1.0"))
    event = origin(path)
    assert event["op"] == "aten._softmax.default" and event["kind"] == "nan", event["op"]
    assert where(event["source"]) == line_of(path, "torch.softmax(scores")
    assert event["masked_input"] is True
    assert where(event["mask_source"]["source"]) == line_of(path, "bias.masked_fill")


def test_baddbmm_that_overflows_beside_a_mask_is_the_birth(model_file):
    """The product itself overflows at positions the mask left finite: a new infinity, born there."""
    path = model_file(ATTENTION_BIAS.replace("SCALE", "1e30"))
    event = origin(path)
    assert event["op"] == "aten.baddbmm.default", event["op"]
    assert where(event["source"]) == line_of(path, "torch.baddbmm(bias")
