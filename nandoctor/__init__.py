"""nandoctor: find where a PyTorch training run's first NaN/Inf is born, why, and what to change.

Python API (the CLI is a thin shell over it):

    import nandoctor
    report = nandoctor.scan("model.py", steps=20, precisions=["32-true", "16-mixed"])
    report.verdict, report.first_nonfinite, report.causes[0].fix
    report.to_dict()          # the documented JSON document (schema_version 1)
"""
from typing import Any

from ._version import __version__

__all__ = ["scan", "postmortem", "__version__"]


def __getattr__(name: str) -> Any:
    # `import nandoctor` stays light (no torch) until the API is used; `nandoctor.scan` is then
    # the real function, so help(nandoctor.scan) shows its signature and docstring.
    if name in ("scan", "postmortem"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'nandoctor' has no attribute {name!r}")
