"""nandoctor: find where a PyTorch training run's first NaN/Inf is born, why, and what to change.

Python API (the CLI is a thin shell over it):

    import nandoctor
    report = nandoctor.scan("model.py", steps=20, precisions=["32-true", "16-mixed"])
    report.verdict, report.first_nonfinite, report.causes[0].fix
    report.to_dict()          # the documented JSON document (schema_version 1)

    report = nandoctor.run_script("train.py", ["--lr", "3e-4"])   # `nandoctor run train.py --lr 3e-4`
    watch = nandoctor.watch(model, optimizer)      # guard the user's own loop (crash bundle on NaN)
    sampler = nandoctor.SkipListSampler(sampler, "nandoctor-bundles")   # resume without the skipped samples
    report = nandoctor.replay("nandoctor-bundles/step-000123", model="model.py")
"""
from typing import Any

from ._version import __version__

__all__ = ["scan", "postmortem", "replay", "run_script", "watch", "NonFiniteError", "NonFiniteWarning",
           "InstabilityWarning", "SkipListSampler", "__version__"]

_API = ("scan", "postmortem", "replay", "run_script")
_WATCH = ("watch", "NonFiniteError", "NonFiniteWarning", "InstabilityWarning")


def __getattr__(name: str) -> Any:
    # `import nandoctor` stays light (no torch) until the API is used; `nandoctor.scan` is then
    # the real function, so help(nandoctor.scan) shows its signature and docstring.
    if name in _API:
        from . import api
        return getattr(api, name)
    if name in _WATCH:
        from .watcher import guard
        return getattr(guard, name)
    if name == "SkipListSampler":
        from .watcher.skip_list import SkipListSampler
        return SkipListSampler
    raise AttributeError(f"module 'nandoctor' has no attribute {name!r}")
