"""What recording costs, counted rather than timed: the ops a recorded step adds to the session's
own step do not grow with the number of modules (issue 20: per-module reductions are a kernel
launch, and a parallel region, per module and step; beside other multi-threaded jobs each one
waits for descheduled threads). And batching never reports a value the module did not output.
"""
from __future__ import annotations

import collections
import contextlib
import textwrap

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nandoctor.load.config import resolve_config
from nandoctor.load.model_file import load_model_file
from nandoctor.run.recorder import Recorder
from nandoctor.run.session import TrainingSession
from nandoctor.trace.vocab import Precision

BLOCKS = """
import torch
from torch import nn

def build_model():
    layers = []
    for _ in range({blocks}):
        layers += [nn.Linear(8, 8), nn.LayerNorm(8), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(8, 3))

def get_batch(step):
    return torch.randn(4, 8), torch.randint(0, 3, (4,))
"""


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _session(tmp_path, source: str) -> TrainingSession:
    path = tmp_path / f"model_{abs(hash(source))}.py"
    path.write_text(textwrap.dedent(source))
    return TrainingSession(load_model_file(path), resolve_config(None, cwd=tmp_path).values, Precision.FP32,
                           torch.device("cpu"))


def _ops(session: TrainingSession, step: int, *probes) -> collections.Counter:
    with _OpCounter() as counter:
        session.run_step(step, *probes)
    return counter.ops


def _recording_cost(tmp_path, blocks: int) -> tuple[int, collections.Counter, int]:
    """(modules, ops a recorded step adds to the session's own step, ops of the plain step)."""
    session = _session(tmp_path, BLOCKS.format(blocks=blocks))
    plain = _ops(session, 0)
    recorder = Recorder(session.model).attach()
    try:
        for step in range(1, 5):               # past the first step, which reduces in the hooks
            session.run_step(step, recorder)
        full = _ops(session, 5, recorder)      # the 5th recorded step takes norms and zero counts
        cheap = _ops(session, 6, recorder)     # the 6th max |x| only
    finally:
        recorder.detach()
    added = (full - plain) + (cheap - plain)
    return len(list(session.model.modules())), added, sum(plain.values())


def test_recorded_step_adds_a_constant_number_of_ops(tmp_path):
    # 10 blocks and up: each repeated shape has enough tensors to be stacked (stats.MIN_STACK).
    small_modules, small, small_plain = _recording_cost(tmp_path, 10)
    big_modules, big, big_plain = _recording_cost(tmp_path, 120)
    assert big_modules >= 10 * small_modules and big_plain > 10 * small_plain
    # Two steps (a cheap and a full one) of a 32-module and a 362-module model: the ops the
    # recorder adds are the same handful of reductions per distinct tensor shape (outputs: the
    # blocks' and the head's; parameters: four): stack, amax, amin, neg, maximum, two norms on a
    # full step, and the views and cats that join them; none is per module.
    assert sum(big.values()) == sum(small.values()), (small, big)
    assert sum(big.values()) <= 120, big
    assert big["aten.aminmax"] == 0 and big["aten._foreach_max"] <= 4


INPLACE = """
import torch
from torch import nn

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)

    def forward(self, x):
        out = self.norm(self.lin(x))
        out += 100.0          # changes the LayerNorm's output after its hook saw it
        return torch.relu_(out)

def build_model():
    return nn.Sequential(Block(), nn.Linear(6, 3))

def get_batch(step):
    return torch.randn(5, 6), torch.randint(0, 3, (5,))
"""


def test_outputs_changed_in_place_are_measured_as_output(tmp_path):
    session = _session(tmp_path, INPLACE)
    norm = session.model[0].norm
    seen: list[float] = []
    norm.register_forward_hook(lambda m, a, out: seen.append(out.detach().abs().max().item()))
    index = [m for _, m in session.model.named_modules()].index(norm)
    recorder = Recorder(session.model).attach()
    try:
        rows = [session.run_step(step, recorder).stats.act.get(index) for step in range(4)]
    finally:
        recorder.detach()
    # The LayerNorm's output is ~N(0, 1) when it leaves the module, > 95 once changed: a row is
    # the value the module output (reduced in the hook once the change was seen), never after.
    for row, expected in zip(rows, seen):
        assert row is not None and abs(row[0] - expected) < 1e-5 * max(1.0, expected), (rows, seen)
        assert row[0] < 50


def test_threads_fit_the_free_cores():
    from nandoctor.run.threads import free_cores
    # This process counts for one runnable thread of the load it measures.
    assert free_cores(2, 0.3) == 2 and free_cores(2, 1.0) == 2
    assert free_cores(2, 2.1) == 1 and free_cores(2, 10.0) == 1      # one busy neighbour, or a crowd
    assert free_cores(16, 3.0) == 14


def test_scan_threads_are_recorded_and_given_back(tmp_path, monkeypatch):
    import pytest
    from nandoctor.api import scan
    from nandoctor.errors import InputError
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(BLOCKS.format(blocks=1)))
    before = torch.get_num_threads()
    report = scan(path, steps=2, precisions=["32-true"], experiments=False, threads=1, cwd=tmp_path)
    threads = report.to_dict()["environment"]["threads"]
    assert threads["threads"] == 1 and threads["reason"] == "set by the threads key"
    assert torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", str(before))      # the user's choice stands under auto
    auto = scan(path, steps=1, precisions=["32-true"], experiments=False, cwd=tmp_path).to_dict()
    assert auto["environment"]["threads"]["threads"] == before and "OMP_NUM_THREADS" in auto["environment"]["threads"]["reason"]
    with pytest.raises(InputError, match="threads"):
        scan(path, steps=1, precisions=["32-true"], experiments=False, threads="0", cwd=tmp_path)


def _watched_step_cost(blocks: int) -> tuple[collections.Counter, collections.Counter]:
    """Ops one guard-only `nandoctor.watch` step adds to the same loop's plain step, and the ops
    an early-warning sampled step adds to an unsampled one."""
    import tempfile

    import nandoctor
    torch.manual_seed(0)
    layers = []
    for _ in range(blocks):
        layers += [torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))

    def step(watch=None):
        with _OpCounter() as counter:
            with watch.step((x, y)) if watch is not None else contextlib.nullcontext():
                loss = torch.nn.functional.cross_entropy(model(x), y)
                if watch is not None:
                    watch.loss(loss)
                loss.backward()
                opt.step()
                opt.zero_grad()
            if watch is None:
                loss.item()        # a loop logs its loss: the watch's one transfer replaces this sync
        return counter.ops

    step()                         # AdamW's state is made on the first step
    plain = step()
    with tempfile.TemporaryDirectory() as out, nandoctor.watch(model, opt, out=out, stats_every=0,
                                                               early_warnings={"every": 2}) as watch:
        counts = [step(watch) for _ in range(4)]     # steps 0 and 2 are sampled
    return counts[3] - plain, counts[2] - counts[3]


def test_watched_step_adds_a_constant_number_of_ops():
    # issue 18/20: the guard's own per-step work was ~1 ms on a 3-layer MLP and grew with the
    # parameter count (a detach per parameter, twice; an isfinite/not/cast per flag). Now the
    # checks are a stacked vector of witnesses and the norms of same-shaped small tensors are
    # one stack and one norm per shape: 31 and 241 parameters add the same ops.
    (small, small_sampled), (big, big_sampled) = _watched_step_cost(10), _watched_step_cost(80)
    # (up to HOST_TOTAL_NORMS gradients, a CPU step sums their norms on the host: no total norm
    # and no read of it, two ops fewer)
    host_total = collections.Counter({"aten.linalg_vector_norm": 1, "aten._local_scalar_dense": 1})
    assert big - host_total == small, (small, big)
    assert sum(big.values()) <= 32, big
    assert big["aten.detach"] <= 2 and big["aten.isfinite"] == 0, big
    # An early-warning sampled step (every 50 by default) was ~10 kernels per module and ~12 per
    # parameter (0.4 s on a 1000-module model; 13k ops here): now fused, the same for both sizes.
    assert sum(big_sampled.values()) == sum(small_sampled.values()), (small_sampled, big_sampled)
    # (a few ops per parameter shape: a `_foreach_*` op counts once here but runs a kernel per
    # tensor on the CPU, so the optimizer-side statistics are stacked per shape instead)
    assert sum(big_sampled.values()) <= 230, big_sampled


def test_early_warning_bookkeeping_runs_outside_the_attention_mode(monkeypatch):
    # A sampled step's attention mode (a TorchFunctionMode) sees every torch call made while it is
    # active, a tensor's .shape, .numel(), .grad and .dtype included. The sampler's own per-module
    # bookkeeping and the guard's gradient checks ran inside it: ~0.1 s of a sampled step on a
    # 1000-module model. Now the mode sees the model's own calls and nothing of nandoctor's.
    import tempfile

    from torch.overrides import TorchFunctionMode

    import nandoctor
    from nandoctor.watcher import early_warnings

    seen = collections.Counter()
    handler = early_warnings._AttentionMode.__torch_function__

    def counting(self, func, types, args=(), kwargs=None):
        seen["mode"] += 1
        seen[getattr(func, "__name__", str(func))] += 1
        return handler(self, func, types, args, kwargs)
    monkeypatch.setattr(early_warnings._AttentionMode, "__torch_function__", counting)

    class ForwardCalls(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen["forward"] += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    layers = []
    for _ in range(40):
        layers += [torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))
    with ForwardCalls():
        model(x)                   # the calls one forward of the model makes by itself
    # stats_every=1: the watch's per-layer statistics hooks run in the same sampled forward
    with tempfile.TemporaryDirectory() as out, nandoctor.watch(model, opt, out=out, stats_every=1,
                                                               early_warnings={"every": 1}) as watch:
        with watch.step((x, y)):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
    # the loop's own loss and backward calls pass through it too; the checks of the gradients
    # (every `.grad` read) ran inside it as well until the passes ended (1128 calls here, not 124)
    assert seen["mode"] <= seen["forward"] + 10, seen
