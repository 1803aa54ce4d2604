"""nandoctor: find where a PyTorch training run's first NaN/Inf is born, why, and what to change.

Python API (the CLI is a thin shell over it):

    import nandoctor
    report = nandoctor.scan("model.py", steps=20, precisions=["32-true", "16-mixed"])
    report.verdict, report.first_nonfinite, report.causes[0].fix
    report.to_dict()          # the documented JSON document (schema_version 1)
"""
from ._version import __version__


def scan(*args, **kwargs):  # noqa: D103 - documented in nandoctor.api.scan
    from .api import scan as _scan
    return _scan(*args, **kwargs)


def postmortem(*args, **kwargs):  # noqa: D103 - documented in nandoctor.api.postmortem
    from .api import postmortem as _postmortem
    return _postmortem(*args, **kwargs)


__all__ = ["scan", "postmortem", "__version__"]
