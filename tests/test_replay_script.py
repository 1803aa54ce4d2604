"""`nandoctor replay --trust` of a training script's bundle tells what `nandoctor run` told."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import nandoctor

COMPAT = Path(__file__).parent / "compat"


def test_replay_of_a_lightning_bf16_run_with_a_nan_image_finds_the_data_as_run_did(tmp_path, monkeypatch):
    # Regression: Lightning's automatic optimization runs training_step inside optimizer.step's
    # closure, after the step hook; the replay armed its traced step there but only a later step's
    # hook could end it, so it traced on through the rest of the fit (~400 s for Lightning's
    # backbone_image_classifier.py) and said `unexplained-nonfinite` where run said `data-nonfinite`.
    pytest.importorskip("lightning")
    shutil.copy(COMPAT / "lit_image_bf16.py", tmp_path)
    monkeypatch.chdir(tmp_path)
    run = nandoctor.run_script("lit_image_bf16.py", out=tmp_path / "bundles", experiments=False)
    ran = run.trace.runs[0].first_nonfinite
    assert (ran.step, ran.phase, run.causes[0].id) == (2, "data", "data-nonfinite")
    bundle = next((tmp_path / "bundles").iterdir())
    replay = nandoctor.replay(bundle, trust=True, experiments=False)
    event = replay.trace.runs[0].first_nonfinite
    assert (event.step, event.phase, event.module, event.reproduced) == (ran.step, ran.phase, ran.module, True)
    assert event.user_source == ran.user_source                # the model call that took the NaN image
    assert replay.causes[0].id == "data-nonfinite"
    assert replay.trace.runs[0].precision == "bf16-mixed"
