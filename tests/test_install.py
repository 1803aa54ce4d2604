"""`pip install nandoctor` alone gives every feature the README shows: the built wheel, installed
with no extras into a fresh virtualenv, runs `scan --html` and a safetensors postmortem.

Torch is not re-installed into the virtualenv (a CPU wheel unpacks to ~1 GB; that alone is about a
minute on the CI machine). Instead the venv sees exactly the distributions that `pip install torch`
would add: torch and its own dependency closure (from torch's metadata), linked into one
directory that a .pth file puts on the venv's path, dist-info included, so pip counts them as
installed. Nothing else of this machine's site-packages is visible, so a dependency nandoctor
forgets to declare (typer, rich, pyyaml, safetensors, numpy, ...) is missing there and the test fails.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLES

pytestmark = [pytest.mark.slow, pytest.mark.install]


def _closure(root: str) -> list[metadata.Distribution]:
    """`root` and every distribution it requires (markers evaluated here, extras left out)."""
    try:
        from packaging.markers import Marker
    except ImportError:              # a machine without the packaging distribution: pip vendors it
        from pip._vendor.packaging.markers import Marker
    seen: dict[str, metadata.Distribution] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        dist = metadata.distribution(name)
        seen[key] = dist
        for req in dist.requires or []:
            spec, _, marker = req.partition(";")
            if marker and ("extra" in marker or not Marker(marker).evaluate()):
                continue
            todo.append(re.split(r"[ <>=!~\[(]", spec.strip(), maxsplit=1)[0])
    return list(seen.values())


def _seed(directory: Path, dists: list[metadata.Distribution]) -> None:
    directory.mkdir()
    for dist in dists:
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops:
            source = Path(dist.locate_file(top))
            if top.startswith("..") or not source.exists():      # scripts in bin/, not importable
                continue
            target = directory / top
            if not target.exists():
                target.symlink_to(source)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_alone_gives_html_and_safetensors_postmortem(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    wheels = tmp_path / "dist"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, ROOT],
                 cwd=tmp_path, env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("nandoctor-*.whl")

    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", venv], cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr[-2000:]
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).stdout.strip())
    _seed(tmp_path / "torch_seed", _closure("torch"))
    (site / "torch_seed.pth").write_text(str(tmp_path / "torch_seed") + "\n")

    installed = _run([python, "-m", "pip", "install", "-q", wheel], cwd=tmp_path, env=env)
    assert installed.returncode == 0, installed.stderr[-3000:]
    # The virtualenv sees no package of this machine beyond torch's closure.
    probe = _run([python, "-c", "import importlib.util as u; print([m for m in ('plotly', 'transformers', 'lightning', "
                  "'hypothesis') if u.find_spec(m)])"], tmp_path, env)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr

    nandoctor = venv / "bin" / "nandoctor"
    html = tmp_path / "report.html"
    scan = _run([nandoctor, "scan", SAMPLES / "nll_classifier.py", "--no-experiments", "-q", "-p", "fp32", "--steps", "2",
                 "--html", html, "--format", "markdown"], cwd=tmp_path, env=env)
    assert scan.returncode == 1, scan.stderr[-3000:]
    # torch's wheel does not pull numpy in, and `import torch` without it warns on the first line of
    # every command; nandoctor declares numpy so that a fresh install starts clean.
    assert "Failed to initialize NumPy" not in scan.stderr and "Warning" not in scan.stderr, scan.stderr[-2000:]
    # Packaging is what this test is about: the wheel alone scans, diagnoses and draws HTML.
    assert "FAIL" in scan.stdout and "nll_classifier.py:28" in scan.stdout, scan.stdout[-2000:]
    assert html.stat().st_size > 10_000 and "nll_classifier.py" in html.read_text()

    import torch
    from safetensors.torch import save_file
    state = {"layer.weight": torch.ones(4, 4), "layer.bias": torch.tensor([0.0, float("nan"), 1.0, 2.0])}
    ckpt = tmp_path / "model.safetensors"
    save_file(state, str(ckpt))
    pm = _run([nandoctor, "postmortem", ckpt, "--format", "json"], cwd=tmp_path, env=env)
    assert pm.returncode == 1, pm.stderr[-3000:]
    doc = json.loads(pm.stdout)
    assert doc["causes"][0]["id"] == "param-nonfinite" and doc["format"] == "safetensors"
    where = _run([python, "-c", "import nandoctor; print(nandoctor.__file__)"], tmp_path, env).stdout
    assert str(venv) in where       # the installed wheel ran, not the working tree
