"""Module paths under `nandoctor run` read as the script names them: the watched model's root is
what the script calls it (never `""`), and when the loop trains several models (a GAN) every path
says whose it is (`D.net.1`). A `replay --trust` of the bundle names them the same way."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import nandoctor

SCRIPTS = Path(__file__).parent / "scripts"


@pytest.mark.parametrize("where, module", [("root", "D"), ("net", "D.net.1")])
def test_a_gan_discriminators_modules_read_as_the_script_names_them(tmp_path, monkeypatch, where, module):
    # Regression: under `nandoctor run` the discriminator's own forward was module `""` (the root).
    shutil.copy(SCRIPTS / "gan_two_models.py", tmp_path)
    monkeypatch.chdir(tmp_path)
    report = nandoctor.run_script("gan_two_models.py", ["--in-net"] if where == "net" else [],
                                  out=tmp_path / "bundles", experiments=False)
    event = report.trace.runs[0].first_nonfinite
    assert (event.step, event.phase, event.module, event.reproduced) == (2, "backward", module, True)
    if where == "net":
        return
    assert f"`{module}`" in " ".join(report.causes[0].evidence)
    bundle = next((tmp_path / "bundles").iterdir())
    replayed = nandoctor.replay(bundle, trust=True, experiments=False).trace.runs[0].first_nonfinite
    assert (replayed.step, replayed.phase, replayed.module) == (2, "backward", module)
