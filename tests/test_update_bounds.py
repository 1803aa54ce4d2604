"""The guard skips reading the weights after an update that provably keeps them finite
(watcher/update_bounds.py), and reads them after every other update."""
import math

import pytest
import torch
from torch import nn

import nandoctor
from nandoctor.watcher import update_bounds
from nandoctor.watcher.update_bounds import RECHECK_EVERY, keeps_weights_finite


def _params():
    return [nn.Parameter(torch.ones(3))]


@pytest.mark.parametrize("make", [
    lambda: torch.optim.SGD(_params(), lr=0.1, momentum=0.9, weight_decay=1e-4),
    lambda: torch.optim.Adam(_params(), lr=1e-3),
    lambda: torch.optim.AdamW(_params(), lr=3e-4, weight_decay=0.1, amsgrad=True),
    lambda: torch.optim.RMSprop(_params(), lr=1e-3),
    lambda: torch.optim.Adagrad(_params(), lr=1e-2),
])
def test_known_optimizers_in_their_usual_ranges_keep_finite_weights_finite(make):
    assert keeps_weights_finite(make(), grad_norm=12.0, weight_norm=40.0)


class MyAdam(torch.optim.Adam):
    pass


def _with(opt, **group):
    """Hyperparameters torch refuses at construction but a loop may still set on a group."""
    opt.param_groups[0].update(group)
    return opt


@pytest.mark.parametrize("make, grad_norm, weight_norm", [
    (lambda: torch.optim.Adam(_params(), lr=1e-3, eps=0.0), 1.0, 1.0),          # 0/0 on a zero gradient
    (lambda: _with(torch.optim.Adam(_params(), lr=1e-3), betas=(0.9, 1.0)), 1.0, 1.0),  # 1 - beta2^t = 0
    (lambda: torch.optim.Adam(_params(), lr=1e-3, betas=(0.99, 0.95)), 1.0, 1.0),  # |m|/sqrt(v) unbounded
    (lambda: torch.optim.SGD(_params(), lr=float("inf")), 1.0, 1.0),
    (lambda: torch.optim.SGD(_params(), lr=1e30), 1.0, 1.0),
    (lambda: torch.optim.Adam(_params(), lr=torch.tensor(1e-3)), 1.0, 1.0),     # a tensor lr: no claim
    (lambda: torch.optim.AdamW(_params(), lr=1.0, weight_decay=3.0), 1.0, 1.0),  # decay factor below 0
    (lambda: torch.optim.RMSprop(_params(), lr=1e-3, centered=True), 1.0, 1.0),  # sqrt of a rounded variance
    (lambda: torch.optim.Adamax(_params(), lr=1e-3), 1.0, 1.0),                 # not one we know
    (lambda: MyAdam(_params(), lr=1e-3), 1.0, 1.0),                            # a subclass may change step()
    (lambda: torch.optim.Adam(_params(), lr=1e-3), math.inf, 1.0),
    (lambda: torch.optim.Adam(_params(), lr=1e-3), 1e20, 1.0),
    (lambda: torch.optim.Adam(_params(), lr=1e-3), 1.0, None),                  # the weights never read
    (lambda: torch.optim.Adam(_params(), lr=1e-3), 1.0, 1e25),
])
def test_no_claim_outside_the_premises(make, grad_norm, weight_norm):
    assert not keeps_weights_finite(make(), grad_norm, weight_norm)


def test_sgd_weight_decay_that_multiplies_the_weights_up_is_no_proof():
    """SGD's coupled decay adds wd * w to the gradient: at lr * wd = 1e4 each update multiplies
    bounded weights by ~1e4, and they overflow well within RECHECK_EVERY unread updates."""
    weight = nn.Parameter(torch.full((3,), 1e17))
    opt = torch.optim.SGD([weight], lr=10.0, weight_decay=1e3)
    assert not keeps_weights_finite(opt, grad_norm=1.0, weight_norm=float(weight.detach().norm()))
    assert keeps_weights_finite(torch.optim.SGD(_params(), lr=10.0, weight_decay=0.1), 1.0, 1e17)
    for _ in range(RECHECK_EVERY):          # what the premises must rule out
        weight.grad = torch.ones(3)
        opt.step()
    assert not torch.isfinite(weight).all()


def test_half_precision_weights_are_not_covered():
    assert update_bounds.dtypes_covered([torch.ones(2), torch.ones(2, dtype=torch.float64)])
    assert not update_bounds.dtypes_covered([torch.ones(2), torch.ones(2, dtype=torch.float16)])


def _run(tmp_path, make_opt, steps, model=None, before=None, during=None):
    torch.manual_seed(0)
    model = model or nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = make_opt(model.parameters())
    if before is not None:
        before(model, opt)
    watch = nandoctor.watch(model, opt, out=tmp_path, stats_every=0, early_warnings=False, spikes=False)
    for step in range(steps):
        if during is not None:
            during(step, model, opt)
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
        with watch.step((x, y)):
            watch.loss(nn.functional.cross_entropy(model(x), y)).backward()
            opt.step()
            opt.zero_grad()
    watch.close()
    return [e["step"] for e in watch.history if "param_norm" in e]


def test_a_healthy_adamw_run_reads_its_weights_every_recheck_steps(tmp_path):
    read = _run(tmp_path, lambda p: torch.optim.AdamW(p, lr=1e-3), 2 * RECHECK_EVERY + 3)
    assert read == [0, RECHECK_EVERY, 2 * RECHECK_EVERY]


@pytest.mark.parametrize("make_opt", [lambda p: torch.optim.Adam(p, lr=1e-3, eps=0.0),
                                      lambda p: MyAdam(p, lr=1e-3),
                                      lambda p: torch.optim.NAdam(p, lr=1e-3)])
def test_updates_without_a_proof_are_read_every_step(tmp_path, make_opt):
    assert _run(tmp_path, make_opt, 6) == list(range(5))     # the last step's weights are read at close


def test_another_step_hook_that_may_write_the_weights_means_every_step(tmp_path):
    def clip(model, opt):
        opt.register_step_post_hook(lambda *_: [p.data.clamp_(-1, 1) for p in model.parameters()])
    assert _run(tmp_path, lambda p: torch.optim.SGD(p, lr=0.1), 5, before=clip) == list(range(4))


def test_eps_zero_adam_still_fires_at_the_update_that_made_the_weights_nan(tmp_path):
    """Adam with eps=0 turns a weight whose gradient is exactly 0 into 0/0 = NaN: the guard reads
    the weights after every such update and names the step and the parameter."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    unused = nn.Parameter(torch.ones(5))            # never in the loss: its gradient is zero
    opt = torch.optim.Adam([*model.parameters(), unused], lr=1e-3, eps=0.0)
    watch = nandoctor.watch(model, opt, out=tmp_path, stats_every=0)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for step in range(4):
            x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
            with watch.step((x, y)):
                loss = watch.loss(nn.functional.cross_entropy(model(x), y)) + 0.0 * unused.sum()
                loss.backward()
                opt.step()
                opt.zero_grad()
    assert caught.value.step == 0 and "parameters" in caught.value.what


def test_weights_left_unread_by_the_last_updates_are_read_when_the_watch_closes(tmp_path):
    """A run never ends on weights nobody read: here the last updates were provably safe (not
    read), and the loop itself wrote a NaN into a weight after its final step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    watch = nandoctor.watch(model, opt, out=tmp_path, stats_every=0, early_warnings=False, spikes=False)
    for step in range(4):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
        with watch.step((x, y)):
            watch.loss(nn.functional.cross_entropy(model(x), y)).backward()
            opt.step()
            opt.zero_grad()
    assert watch._updates_unread > 0
    with torch.no_grad():
        model[2].weight[1, 1] = float("nan")
    with pytest.warns(nandoctor.NonFiniteWarning):
        watch.close()
    assert watch.nonfinite_steps == 1 and watch.events[-1]["check"] == "parameters"
    assert "2.weight" in watch.events[-1]["what"]


def test_nandoctor_run_bounds_the_updates_as_the_watch_does(tmp_path):
    """Under `nandoctor run` the guard's own global step hooks sit beside the watch's: they read the
    weights (and an lr experiment's rewind tells the watch), so they do not make every update a read
    (they did: ~1.3 ms a step on 1002 parameters)."""
    (tmp_path / "train.py").write_text(
        "import torch\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))\n"
        "opt = torch.optim.AdamW(model.parameters(), lr=1e-3)\n"
        f"for step in range({2 * RECHECK_EVERY + 3}):\n"
        "    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))\n"
        "    torch.nn.functional.cross_entropy(model(x), y).backward()\n"
        "    opt.step(); opt.zero_grad()\n")
    report = nandoctor.run_script(tmp_path / "train.py", out=tmp_path / "bundles", experiments=False,
                                  stats_every=0, snapshot_every=0)
    assert report.exit_code == 0
    read = [e["step"] for e in report.history if e.get("param_norm") is not None]
    assert read == [0, RECHECK_EVERY, 2 * RECHECK_EVERY], read


def test_weights_put_in_place_by_a_rollback_or_a_rewind_are_not_bounded_from_an_earlier_read(tmp_path):
    """`Watch.weights_replaced` (called by a rollback's put_back and by run's lr-experiment rewind):
    the next update is read, not bounded from the norm read before the replacement."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    watch = nandoctor.watch(model, opt, out=tmp_path, stats_every=0, early_warnings=False, spikes=False)
    for step in range(3):
        x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        with watch.step((x, y)):
            watch.loss(nn.functional.cross_entropy(model(x), y)).backward()
            opt.step()
            opt.zero_grad()
    assert watch._read_weight_norm is not None
    watch.weights_replaced()
    assert not watch._update_kept_finite(opt)
    watch.close()


def test_a_step_hook_swapped_for_another_mid_run_is_seen(tmp_path):
    """The watch looks at the optimizer's step hooks again only when they changed (their count
    and the sum of their handle ids, which only grow): one hook removed and a weight-writing one
    added leaves the count as it was, and every update from then on is read."""
    from nandoctor.watcher.guard import weights_read_only
    handles = []

    def before(model, opt):
        handles.append(opt.register_step_post_hook(weights_read_only(lambda *_: None)))

    def during(step, model, opt):
        if step == RECHECK_EVERY + 4:
            handles[0].remove()
            opt.register_step_post_hook(lambda *_: [p.data.clamp_(-1, 1) for p in model.parameters()])
    read = _run(tmp_path, lambda p: torch.optim.AdamW(p, lr=1e-3), RECHECK_EVERY + 8, before=before, during=during)
    assert read == [0, RECHECK_EVERY, RECHECK_EVERY + 4, RECHECK_EVERY + 5, RECHECK_EVERY + 6]
