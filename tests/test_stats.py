"""Statistics and origin tracing: property tests against plain reference computations."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from nandoctor.run import stats

values = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.just(0.0))


@settings(max_examples=80, deadline=None)
@given(st.lists(values, min_size=1, max_size=40))
def test_tensor_row_matches_reference(xs):
    t = torch.tensor(xs, dtype=torch.float32)
    row = stats.tensor_row(t).tolist()
    facts = stats.row_facts(row, len(xs))
    has_nan = any(math.isnan(x) for x in xs)
    has_inf = any(math.isinf(x) for x in xs)
    assert facts["nan"] == float(has_nan)
    assert facts["inf"] == float(has_inf and not has_nan)
    assert facts["zero_frac"] == pytest.approx(sum(x == 0 for x in xs) / len(xs))
    if has_nan:
        assert math.isnan(facts["max_abs"])
    elif has_inf:
        assert facts["max_abs"] == math.inf
    else:
        assert facts["max_abs"] == pytest.approx(max(abs(x) for x in xs))
        squares = sum(float(x) ** 2 for x in xs)
        # Documented limit: the L2 norm accumulates in float32 and saturates to inf once the
        # sum of squares passes float32's max (elements beyond ~1.8e19); max|x| stays exact.
        if squares < torch.finfo(torch.float32).max / 2:
            assert facts["norm"] == pytest.approx(math.sqrt(squares), rel=1e-4)
        elif squares > torch.finfo(torch.float32).max * 2:
            assert facts["norm"] == math.inf or facts["norm"] == pytest.approx(math.sqrt(squares), rel=1e-4)


def test_cheap_rows_measure_min_max_only():
    row = stats.tensor_row(torch.tensor([0.0, -3.0, float("inf")]), full=False).tolist()
    facts = stats.row_facts(row, 3)
    assert facts["inf"] == 1.0 and facts["norm"] is None and facts["zero_frac"] is None


def test_zero_counts_per_tensor():
    tensors = [torch.tensor([0.0, 1.0, 0.0]), torch.tensor([2.0]), torch.zeros(4)]
    assert stats.zero_counts(tensors).tolist() == [2.0, 0.0, 4.0]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(values, min_size=1, max_size=10), min_size=1, max_size=6))
def test_segment_counts_match_per_tensor_counts(chunks):
    tensors = [torch.tensor(c, dtype=torch.float32) for c in chunks]
    assert stats.segment_counts(tensors, "zero").tolist() == [float(sum(x == 0 for x in c)) for c in chunks]
    assert stats.segment_counts(tensors, "nonfinite").tolist() == [float(sum(not math.isfinite(x) for x in c)) for c in chunks]


def test_iter_tensors_walks_nested_outputs():
    from dataclasses import dataclass

    @dataclass
    class Out:
        logits: torch.Tensor
        extra: dict

    found = [p for p, _ in stats.iter_tensors(Out(torch.ones(1), {"a": (torch.ones(1), 3)}))]
    assert found == [".logits", ".extra['a'][0]"]


DELIBERATE = """
import torch
from torch import nn

class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        scores = self.proj(x) @ x.transpose(1, 2)
        causal = torch.full(scores.shape[-2:], float('-inf'), device=x.device).triu(1)
        pad = torch.zeros(scores.shape[-1], dtype=torch.bool, device=x.device)
        pad[-1] = True
        scores = scores.masked_fill(pad, float('-inf')) + causal
        scores = scores + (~pad).to(scores.dtype).sub(1).abs() * torch.finfo(scores.dtype).min
        return torch.softmax(scores, -1) @ x

def build_model():
    return Masked()

def get_batch(step):
    x = torch.randn(4, 6, 8)
    return x, x
"""


def test_deliberate_infinities_are_not_origins(model_file):
    import nandoctor
    report = nandoctor.scan(model_file(DELIBERATE), steps=4,
                            precisions=["32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true"])
    doc = report.to_dict()
    assert doc["first_nonfinite"] is None, doc["first_nonfinite"]
    # This model builds float32 tensors in forward, which crash under pure 16-bit weights: a
    # crash is a failure of that precision (user-error), never a NaN origin.
    errors = [c for c in doc["causes"] if c["severity"] == "error"]
    assert all(c["id"] == "user-error" and all(p.endswith("-true") for p in c["precisions"]) for c in errors), errors


_witness_dtypes = st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64])


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(st.lists(values, min_size=1, max_size=30), _witness_dtypes), min_size=1, max_size=4))
def test_witnesses_trip_on_every_nonfinite_and_the_exact_one_only_then(parts):
    """The exact witness is non-finite exactly when a tensor holds NaN/Inf; the quick (float32) one
    whenever the exact one is, and otherwise only when confirming says no (holds_nonfinite)."""
    tensors = [torch.tensor(xs, dtype=torch.float32).to(dtype) for xs, dtype in parts]
    bad = any(not bool(torch.isfinite(t).all()) for t in tensors)
    exact = stats.nonfinite_witness(tensors)
    quick = stats.nonfinite_witness(tensors, exact=False)
    assert exact.dtype == torch.float64 and quick.dtype == torch.float32
    assert (not math.isfinite(float(exact))) == bad == stats.holds_nonfinite(tensors)
    if bad:
        assert not math.isfinite(float(quick))


def test_a_quick_witness_can_overflow_where_the_exact_one_cannot():
    huge = [torch.full((8,), 3e38)]
    assert math.isfinite(float(stats.nonfinite_witness(huge)))
    assert not math.isfinite(float(stats.nonfinite_witness(huge, exact=False)))
    assert not stats.holds_nonfinite(huge)


@pytest.mark.parametrize("shapes", [[(64, 32), (64,), (3, 64)], [(4,)] * 12 + [(300, 20)], [(5,), (0,)]])
def test_grouped_norms_unstacked_are_the_stacked_ones(shapes):
    """GroupedNorms(stacked=False) may give a tuple of 0-dim norms instead of a vector (the
    watch reads them one by one on the CPU); as_vector makes either form the same vector."""
    torch.manual_seed(0)
    tensors = [torch.randn(s) for s in shapes]
    tensors[0][0] = math.inf
    norms = stats.GroupedNorms()
    stacked = norms(tensors)
    loose = norms(tensors, stacked=False)
    assert torch.equal(stats.as_vector(loose), stacked)
    assert stacked.tolist() == [torch.linalg.vector_norm(t).item() for t in tensors]
