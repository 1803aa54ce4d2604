"""The HTML report: story first, self-contained, every chart drawn, for scan, replay and
postmortem documents (rendered from the saved traces in tests/golden/, so no model runs here),
and in a real headless browser without script errors."""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLES, run_cli
from nandoctor.report.html import render_html
from nandoctor.report.saved import load_document
from nandoctor.report.svg import INF_COLOR, NAN_COLOR

GOLDEN = ROOT / "tests" / "golden"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _doc(name: str) -> dict:
    return load_document(GOLDEN / f"{name}.trace.json")


def _replay_doc() -> dict:
    """A replay-shaped document: a scan document with command "replay" and a history window."""
    doc = copy.deepcopy(_doc("nll_classifier"))
    doc["command"] = "replay"
    doc["history"] = [{"step": i, "loss": 2.0 - 0.1 * i, "grad_norm": 1.0 + i} for i in range(8)] + \
                     [{"step": 8, "loss": "Infinity", "grad_norm": "NaN"}]
    return doc


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)     # the documents name sample_models/... relative to the repository root


def _charts(page: str) -> list[str]:
    return re.findall(r'<figure class="chart" data-chart="([^"]+)">', page)


def _chart(page: str, chart_id: str) -> str:
    start = page.index(f'data-chart="{chart_id}"')
    return page[start:page.index("</figure>", start)]


def test_failing_scan_tells_the_story_first(at_root):
    page = render_html(_doc("nll_classifier"))
    # Verdict, then the origin sentence and the source lines around the failing line, highlighted.
    assert page.index("FAIL") < page.index("Inf born in loss at step 0") < page.index("Causes") < page.index("Evidence")
    hit = re.search(r'<span class="hit"><span class="ln">\s*28</span> (.*?)</span>', page)
    assert hit and "torch.log(torch.softmax(logits, dim=-1))" in hit.group(1)
    assert page.count('<span class="ln">') >= 5            # context lines read from the file
    # The origin is outside every module (the loss): the tree says so and the heat map outlines the step.
    assert "(outside every module: loss)" in page
    assert 'class="nd-origin"' in _chart(page, "heat-act-32-true")
    # Gradients at step 0 are NaN: drawn as NaN cells, not gaps.
    assert f'fill="{NAN_COLOR}"' in _chart(page, "heat-par-32-true")
    # The float16 limit is drawn and labelled where a reader sees it.
    assert "float16 max 65504" in _chart(page, "headroom-32-true")
    # Every chart is an inline SVG; nothing is fetched from the network.
    assert all("<svg" in _chart(page, c) for c in _charts(page))
    assert "<script src=" not in page and "http://" not in page and "https://" not in page
    assert len(page.encode()) < 150_000


def test_the_source_line_is_shown_even_when_the_file_is_gone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = render_html(_doc("nll_classifier"))
    assert "the recorded line" in page and 'class="hit">log_probs = torch.log(torch.softmax(logits, dim=-1))' in page


def test_scaler_collapse_draws_skips_and_inf_gradients(at_root):
    page = render_html(_doc("demand_forecast"))
    scale = _chart(page, "scale")
    assert "16-mixed (20 skipped)" in scale and "skip" in scale
    grads = _chart(page, "heat-par-16-mixed")
    assert f'fill="{NAN_COLOR}"' in grads and f'fill="{INF_COLOR}"' in grads
    assert "nd-nonfinite" in _chart(page, "gradnorm")       # non-finite total norms are markers, not gaps


def test_charts_without_data_say_so_in_words(at_root):
    doc = _doc("nll_classifier")
    doc["runs"] = [r for r in doc["runs"] if r["precision"] == "32-true"]
    page = render_html(doc)
    assert "no 16-mixed run with a GradScaler" in _chart(page, "scale")
    assert "nd-empty" in _chart(page, "scale")


def test_identical_precisions_do_not_hide_each_other(at_root):
    doc = _doc("demand_forecast")
    doc["runs"][2]["losses"] = list(doc["runs"][0]["losses"])
    loss = _chart(render_html(doc), "loss")
    assert "bf16-mixed — same values as 32-true" in loss
    assert len(re.findall(r'<path d="M[^"]*" fill="none"', loss)) == 3      # three lines drawn, none dropped


@pytest.mark.parametrize("modules", [300, 1200])
def test_large_models_keep_every_module(modules, at_root):
    """A 244-module model's 16-mixed gradients once went missing; every module keeps its row."""
    doc = _doc("demand_forecast")
    for precision, layers in doc["layers"].items():
        doc["layers"][precision] = [layers[0]] + [dict(layers[1], module=f"blocks.{i}.mlp.fc") for i in range(modules)]
    page = render_html(doc)
    for chart in ("heat-act-16-mixed", "heat-par-16-mixed"):
        heat = _chart(page, chart)
        named = set(re.findall(r"<title>(blocks\.\d+\.mlp\.fc)", heat))
        assert named == {f"blocks.{i}.mlp.fc" for i in range(modules)}, chart
    assert f"Showing the 30 of {modules} modules closest to the limit" in page
    assert len(page.encode()) < modules * 3_000


def test_postmortem_page_has_module_table_and_worst_tensors():
    page = render_html(_doc("postmortem_safetensors"))
    assert "2 tensor(s) hold NaN/Inf" in page and "Per module" in page and "Tensors, worst first" in page
    assert _charts(page) == ["modules"]
    assert '<tr class="nonfinite"><td><code>0.bias</code>' in page


def test_replay_page_shows_the_history_window(at_root):
    page = render_html(_replay_doc())
    assert "nandoctor replay" in page and "History window" in page
    assert "nd-nonfinite" in _chart(page, "history")          # the Inf loss of the last step is a marker


def test_cli_writes_the_html_file(tmp_path):
    out = tmp_path / "report.html"
    result = run_cli("report", GOLDEN / "demand_forecast.trace.json", "-q", "--html", out)
    assert result.exit_code == 1
    assert "loss-scale-collapse" in out.read_text() and len(_charts(out.read_text())) == 3 + 3 * 3   # loss, scale, norm; 2 heat maps + headroom per precision


def _browser(page: Path) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", proc.stdout)
    assert body, proc.stderr[-2000:]
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(0)))


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs Debian's chromium)")
@pytest.mark.parametrize("kind", ["scan", "replay", "postmortem"])
def test_every_chart_draws_in_headless_chromium_without_script_errors(kind, tmp_path, at_root):
    doc = {"scan": lambda: _doc("nll_classifier"), "replay": _replay_doc,
           "postmortem": lambda: _doc("postmortem_safetensors")}[kind]()
    page = tmp_path / f"{kind}.html"
    page.write_text(render_html(doc), encoding="utf-8")
    attrs = _browser(page)
    assert attrs["command"] == kind
    assert int(attrs["charts-expected"]) == len(_charts(page.read_text())) >= 1
    assert attrs["charts-drawn"] == attrs["charts-expected"]
    assert json.loads(attrs["errors"].replace("&quot;", '"')) == []


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs Debian's chromium)")
def test_the_browser_check_itself_catches_a_script_error(tmp_path, at_root):
    page = tmp_path / "broken.html"
    page.write_text(render_html(_doc("nll_classifier")).replace("</body>", "<script>undefinedFunction();</script></body>"))
    assert "undefinedFunction" in _browser(page)["errors"]
