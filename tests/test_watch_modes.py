"""A step that raises leaves torch as it found it: no function or dispatch mode of nandoctor's
stays on torch's mode stacks, so the user's next calls (and nn.MultiheadAttention's fused fast
path) run as they would unwatched. Regression: the early-warning sampler's function mode stayed
on the stack after a step raised in backward, and later tests' attention modules left their fast
path (tests/test_compat.py after tests/test_watch.py in one process)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import nandoctor


def mode_stacks() -> tuple[int, int]:
    return torch._C._len_torch_function_stack(), torch._C._len_torch_dispatch_stack()


def mha_takes_its_fast_path() -> bool:
    """A fully padded sample: NaN on the fused fast path, zeros on the slow one (any function mode)."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 4, 8)
    padding = torch.zeros(2, 4, dtype=torch.bool)
    padding[1] = True
    with torch.no_grad():
        out, _ = mha(x, x, x, key_padding_mask=padding, need_weights=False)
    return bool(out[1].isnan().all())


class _RaiseInBackward(torch.autograd.Function):
    error: type = RuntimeError

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise _RaiseInBackward.error("the user's backward raised")


class Attention(nn.Module):
    """A hand-written attention: its softmax is what the sampler's function mode measures."""

    def __init__(self):
        super().__init__()
        self.qk = nn.Linear(8, 16)

    def forward(self, x):
        q, k = self.qk(x).chunk(2, -1)
        return torch.softmax(q @ k.transpose(-2, -1), -1) @ x


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Attention()
        self.head = nn.Linear(8, 1)
        self.fail: tuple[str, type] | None = None     # (phase, exception type) of the next step

    def forward(self, x):
        h = self.attn(x)
        if self.fail is not None and self.fail[0] == "forward":
            raise self.fail[1]("the user's forward raised")
        if self.fail is not None and self.fail[0] == "backward":
            _RaiseInBackward.error = self.fail[1]
            h = _RaiseInBackward.apply(h)
        return self.head(h).mean()


@pytest.mark.parametrize("phase", ["forward", "backward"])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("marked", [False, True], ids=["hooks-only", "watch.step"])
def test_a_step_that_raises_leaves_no_mode_on_torch_stacks(tmp_path, phase, error, marked):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = mode_stacks()
    watch = nandoctor.watch(model, opt, out=tmp_path, warn=False, early_warnings={"every": 1})

    def one_step(step):
        x = torch.randn(2, 4, 8)
        model.fail = (phase, error) if step == 1 else None
        if marked:
            with watch.step(x):
                model(x).backward()
        else:
            model(x).backward()
        opt.step()
        opt.zero_grad()

    one_step(0)
    with pytest.raises(error, match="the user's"):
        one_step(1)
    if error is KeyboardInterrupt and phase == "forward" and not marked:
        # torch runs no forward hook on a BaseException: the mode is left at the watch's next forward
        # of the model or its close, whichever comes first.
        model.fail = None
        model(torch.randn(2, 4, 8))
    assert mode_stacks() == before
    assert mha_takes_its_fast_path()
    opt.zero_grad()
    one_step(2)                                  # the loop goes on: the watch still samples, and leaves again
    assert mode_stacks() == before
    assert watch.early.series, "the sampled steps measured nothing"
    watch.close()
    assert mode_stacks() == before


def test_a_watch_closed_mid_forward_leaves_no_mode(tmp_path):
    model = Net()
    before = mode_stacks()
    watch = nandoctor.watch(model, torch.optim.SGD(model.parameters(), lr=0.01), out=tmp_path, warn=False,
                            early_warnings={"every": 1})
    model.attn.register_forward_hook(lambda *args: watch.close())
    model(torch.randn(2, 4, 8)).backward()
    assert mode_stacks() == before and mha_takes_its_fast_path()


def test_the_users_own_function_mode_stays_on_the_stack_where_the_user_left_it(tmp_path):
    # The user's mode is entered inside the model's forward and left after it (not nested inside
    # ours): leaving our mode must not pop theirs, which sits above it.
    from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

    class CountCalls(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.calls += 1
            return func(*args, **(kwargs or {}))

    model = Net()
    users = CountCalls()
    model.attn.register_forward_pre_hook(lambda *args: users.__enter__() and None)
    before = mode_stacks()
    watch = nandoctor.watch(model, torch.optim.SGD(model.parameters(), lr=0.01), out=tmp_path, warn=False,
                            early_warnings={"every": 1})
    loss = model(torch.randn(2, 4, 8))
    assert _get_current_function_mode_stack() == [users]
    users.__exit__(None, None, None)
    loss.backward()
    watch.close()
    assert users.calls > 0 and mode_stacks() == before
