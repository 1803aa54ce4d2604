"""`nandoctor replay BUNDLE`: a plain loop's crash bundle re-run with the origin tracer, through
the CLI, for a NaN born in each phase; bad bundles and missing inputs are exit 2."""
from __future__ import annotations

import importlib.util
import json
import pickle
import textwrap
from pathlib import Path

import jsonschema
import pytest
import torch

import nandoctor
from conftest import json_of, run_cli
from test_formats import SCHEMA

MODEL_SOURCE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
        self.gate = nn.Parameter(torch.ones(3))

    def forward(self, x):
        h = self.body(x)
        h = h + torch.log(x[:, :1] + 8.0)                    # NaN when x < -8: forward
        spread = (h - h.mean(0)).pow(2).sum(0).sqrt()         # sqrt'(0) when rows agree: backward
        h = h + spread.sum() * 1e-3
        if bool((x[:, 3] == 42.0).any()):
            h = h + 0.0 * self.gate                          # a zero gradient for gate: optimizer
        return h


def build_model():
    return Net()


def training_step(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)
'''
def _line_of(text: str) -> int:
    return next(i for i, line in enumerate(textwrap.dedent(MODEL_SOURCE).splitlines(), 1) if text in line)


LOG_LINE = _line_of("torch.log(")
SQRT_LINE = _line_of(".sqrt()")


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"user_model_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def watched_loop(tmp_path: Path, steps: int = 12, bad: dict | None = None, accumulate: int = 1,
                 optimizer: str = "adamw", **watch_options):
    """Train the model file's Net in a plain loop under watch; `bad` maps (step, micro) to how the
    batch is broken. Returns (model file path, NonFiniteError or None)."""
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(MODEL_SOURCE))
    user = load(path)
    torch.manual_seed(0)
    net = user.build_model()
    if optimizer == "half-adam":          # float16 weights: the gate's eps 1e-8 is 0, a zero gradient gives 0/0
        net.half()
        opt = torch.optim.Adam([{"params": [net.gate], "eps": 1e-8},
                                {"params": list(net.body.parameters()), "eps": 1e-3}], lr=1e-2)
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    dtype = next(net.parameters()).dtype
    watch = nandoctor.watch(net, opt, out=tmp_path / "bundles", **watch_options)
    bad = bad or {}
    try:
        for step in range(steps):
            for micro in range(accumulate):
                g = torch.Generator().manual_seed(100 * step + micro)
                x, y = torch.randn(8, 4, generator=g).to(dtype), torch.randint(0, 3, (8,), generator=g)
                how = bad.get((step, micro))
                if how == "nan":
                    x[3, 0] = float("nan")
                elif how == "log":
                    x[2, 0] = -9.0
                elif how == "gate":
                    x[0, 3] = 42.0
                elif how == "sqrt":
                    x[:] = x[0].clone()                             # identical rows: spread 0
                with watch.step((x, y)):
                    loss = watch.loss(user.training_step(net, (x, y))) / accumulate
                    loss.backward()
                    if micro == accumulate - 1:
                        opt.step()
                        opt.zero_grad()
    except nandoctor.NonFiniteError as err:
        return path, err
    finally:
        watch.close()
    return path, None


def replay_json(bundle, *args):
    result = run_cli("replay", bundle, *args, "--format", "json")
    doc = json_of(result)
    jsonschema.validate(json.loads(json.dumps(doc, allow_nan=False)), SCHEMA)
    assert doc["command"] == "replay" and doc["exit_code"] == result.exit_code
    return result, doc


def test_forward_nan_replays_to_the_log_line_with_a_confirming_experiment(tmp_path):
    model, err = watched_loop(tmp_path, bad={(5, 0): "log"})
    assert err.step == 5
    result, doc = replay_json(err.bundle, "--model", model)
    event = doc["first_nonfinite"]
    assert result.exit_code == 1 and doc["verdict"] == "fail"
    assert (event["step"], event["phase"], event["op"], event["reproduced"]) == (5, "forward", "aten.log.default", True)
    assert event["user_source"] == f"{model}:{LOG_LINE}" or event["source"].endswith(f"model.py:{LOG_LINE}")
    assert doc["causes"][0]["id"] == "unstable-op"
    assert doc["bundle"]["step"] == 5 and doc["bundle"]["check"] == "loss"
    assert [h["step"] for h in doc["history"]] == list(range(5))
    assert doc["experiments"]


def test_backward_nan_replays_to_the_sqrt_line(tmp_path):
    model, err = watched_loop(tmp_path, bad={(3, 0): "sqrt"})
    assert err.step == 3 and "gradients" in err.what
    result, doc = replay_json(err.bundle, "--model", model, "--no-experiments")
    event = doc["first_nonfinite"]
    assert (event["step"], event["phase"]) == (3, "backward")
    assert event["source"].endswith(f"model.py:{SQRT_LINE}") and "sqrt" in (event["forward_op"] or event["op"])
    assert result.exit_code == 1


def test_nan_in_one_micro_batch_of_an_accumulated_step(tmp_path):
    model, err = watched_loop(tmp_path, bad={(4, 1): "nan"}, accumulate=2)
    assert err.step == 4
    result, doc = replay_json(err.bundle, "--model", model, "--no-experiments")
    event = doc["first_nonfinite"]
    assert (event["step"], event["phase"]) == (4, "data") and event["tensor"].startswith("inputs[1]")
    assert doc["bundle"]["micro_batches"] == 2 and result.exit_code == 1


def test_optimizer_nan_replays_from_the_snapshot(tmp_path):
    model, err = watched_loop(tmp_path, bad={(6, 0): "gate"}, optimizer="half-adam", snapshot=True)
    assert err.step == 6
    result, doc = replay_json(err.bundle, "--model", model, "--no-experiments")
    event = doc["first_nonfinite"]
    assert (event["step"], event["phase"], event["parameter"]) == (6, "optimizer", "gate")
    assert event["reproduced"] is True and result.exit_code == 1
    assert doc["causes"][0]["id"] == "optimizer-eps" and doc["runs"][0]["precision"] == "16-true"


def test_optimizer_nan_without_snapshot_still_fails_and_says_why(tmp_path):
    model, err = watched_loop(tmp_path, bad={(2, 0): "gate"}, optimizer="half-adam")
    result, doc = replay_json(err.bundle, "--model", model)
    event = doc["first_nonfinite"]
    assert doc["bundle"]["state"] == "after-step" and event["phase"] == "optimizer" and event["reproduced"] is None
    assert event["parameter"] == "gate" and any("snapshot=True" in n for n in doc["notes"])
    assert doc["verdict"] == "fail" and doc["causes"][0]["id"] == "optimizer-eps"


def test_a_failure_that_does_not_reproduce_is_reported_as_such(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(MODEL_SOURCE))
    user = load(path)
    torch.manual_seed(0)
    net = user.build_model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    watch = nandoctor.watch(net, opt, out=tmp_path / "bundles")
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        for step in range(5):
            x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
            with watch.step((x, y)):
                loss = user.training_step(net, (x, y)) * (float("nan") if step == 3 else 1.0)   # not in model.py
                watch.loss(loss).backward()
                opt.step()
                opt.zero_grad()
    result, doc = replay_json(caught.value.bundle, "--model", path, "--no-experiments")
    assert doc["first_nonfinite"]["reproduced"] is False and doc["verdict"] != "pass"
    assert doc["causes"][0]["id"] == "nonreproducible"
    assert "the loss is NaN" in doc["causes"][0]["evidence"][0]


def test_plain_bundle_without_a_model_file_says_what_to_pass(tmp_path):
    _, err = watched_loop(tmp_path, bad={(1, 0): "nan"})
    result = run_cli("replay", err.bundle)
    assert result.exit_code == 2 and "--model model.py" in result.stderr and "Traceback" not in result.stderr


class _Canary:
    def __reduce__(self):
        return (Path.touch, (Path(CANARY),))


CANARY = "/tmp/nandoctor-replay-canary"


def test_bundles_are_never_unpickled(tmp_path):
    Path(CANARY).unlink(missing_ok=True)
    model, err = watched_loop(tmp_path, bad={(1, 0): "nan"})
    folder = Path(err.bundle)
    (folder / "model.safetensors").write_bytes(pickle.dumps(_Canary()))       # a pickle in safetensors' place
    result = run_cli("replay", folder, "--model", model)
    assert result.exit_code == 2 and "never unpickles" in result.stderr
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["weights.pt"] = {"bytes": 10}
    (folder / "weights.pt").write_bytes(pickle.dumps(_Canary()))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("replay", folder, "--model", model)
    assert result.exit_code == 2 and "weights.pt" in result.stderr
    (folder / "manifest.json").write_text("{not json")
    assert run_cli("replay", folder, "--model", model).exit_code == 2
    assert not Path(CANARY).exists()


def test_replay_html_tells_the_story_of_a_real_bundle_and_draws_in_a_browser(tmp_path):
    """Issue 13: the HTML page of a real replay (not a hand-made document): the origin line, the
    bundle's history window as a chart, and every chart drawn in headless chromium."""
    from test_html import CHROMIUM, _browser, _charts
    model, err = watched_loop(tmp_path, bad={(6, 0): "log"})
    page = tmp_path / "replay.html"
    result, doc = replay_json(err.bundle, "--model", model, "--no-experiments", "--html", page)
    assert result.exit_code == 1
    html = page.read_text(encoding="utf-8")
    assert "nandoctor replay" in html and 'data-chart="history"' in html
    assert f"model.py:{LOG_LINE}" in html and "aten.log.default" in html
    assert "<script src=" not in html            # self-contained: nothing fetched
    if CHROMIUM is not None:
        attrs = _browser(page)
        assert attrs["command"] == "replay"
        assert attrs["charts-drawn"] == attrs["charts-expected"] == str(len(_charts(html)))
        assert json.loads(attrs["errors"].replace("&quot;", '"')) == []


def test_replay_reads_a_config_file_and_refuses_a_bad_one(tmp_path):
    """`replay --config`: the thresholds and experiment settings of a config file apply; a bad
    key is exit 2 naming it, as for scan."""
    model, err = watched_loop(tmp_path, bad={(4, 0): "log"})
    config = tmp_path / "nandoctor.yaml"
    config.write_text("experiments:\n  enabled: false\n")
    result, doc = replay_json(err.bundle, "--model", model, "--config", config)
    assert result.exit_code == 1 and doc["experiments"] == [] and doc["config"]["experiments"]["enabled"] is False
    config.write_text("experimentz: {}\n")
    bad = run_cli("replay", err.bundle, "--model", model, "--config", config)
    assert bad.exit_code == 2 and "experimentz" in bad.stderr and "Traceback" not in bad.stderr


DIVERGING_SOURCE = '''
import torch
from torch import nn


def build_model():
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))


def training_step(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)
'''


def test_a_run_diverging_at_a_far_too_high_lr_replays_as_high_lr_from_its_history(tmp_path):
    """Regression: replay ignored the bundle's history window. nanoGPT at lr 10 was diagnosed
    bad-init ("remove the custom initialisation") although the history showed the loss going
    4.8 -> 1622 at lr 10; the replayed weights had simply taken steps at that lr."""
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(DIVERGING_SOURCE))
    user = load(path)
    torch.manual_seed(0)
    net = user.build_model()
    opt = torch.optim.SGD(net.parameters(), lr=50.0)
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        with nandoctor.watch(net, opt, out=tmp_path / "bundles") as watch:
            for step in range(50):
                x = torch.randn(16, 8, generator=torch.Generator().manual_seed(step))
                batch = (x, 2.0 * x[:, :1])
                with watch.step(batch):
                    watch.loss(user.training_step(net, batch)).backward()
                    opt.step()
                    opt.zero_grad()
    err = caught.value
    manifest = json.loads((err.bundle / "manifest.json").read_text())
    losses = [h["loss"] for h in manifest["history"]]
    assert err.step > 2 and len(losses) == err.step and losses[-1] > 1e6 * losses[0]   # the rise is in the bundle

    result, doc = replay_json(err.bundle, "--model", path)
    assert result.exit_code == 1 and doc["first_nonfinite"]["step"] == err.step
    top = doc["causes"][0]
    assert top["id"] == "high-lr" and top["explains_origin"], [c["id"] for c in doc["causes"]]
    assert "learning rate 50 is too high" in top["title"] and "from 50 to 5e+00" in top["fix"]
    assert any("the watched run's loss rose from" in e and "at learning rate 50" in e for e in top["evidence"])
    assert "bad-init" not in [c["id"] for c in doc["causes"]]
    assert not any(e["id"] == "lower-lr" for e in doc["experiments"])   # the replayed step fails before its update
