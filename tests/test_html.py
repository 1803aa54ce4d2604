"""The HTML report in a real headless browser: it loads without script errors and draws every chart."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile

import pytest

from conftest import SAMPLES, run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_html_is_self_contained(tmp_path):
    out = tmp_path / "report.html"
    result = run_cli("scan", SAMPLES / "demand_forecast.py", "--no-experiments", "-q", "--html", out)
    assert result.exit_code == 1
    text = out.read_text()
    assert "<script src=" not in text   # plotly.js is inlined: readable offline
    assert text.count('class="chart"') == 5 and "loss-scale-collapse" in text


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs Debian's chromium)")
def test_html_renders_every_chart_in_headless_chromium(tmp_path):
    out = tmp_path / "report.html"
    run_cli("scan", SAMPLES / "long_context_attention.py", "--no-experiments", "-q", "--html", out)
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", out.as_uri()],
            capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", proc.stdout)
    assert body, proc.stderr[-2000:]
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(0)))
    assert attrs["charts-expected"] == "5"
    assert attrs["charts-drawn"] == "5"
    assert attrs["errors"] == "[]"
