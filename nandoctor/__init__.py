"""nandoctor: find where a PyTorch training run's first NaN/Inf is born, why, and what to change.

Python API (the CLI is a thin shell over it):

    import nandoctor
    report = nandoctor.scan("model.py", steps=20, precisions=["32-true", "16-mixed"])
    report.verdict, report.first_nonfinite, report.causes[0].fix
    report.to_dict()          # the documented JSON document (schema_version 1)
"""
__version__ = "0.1.0"


def scan(*args, **kwargs):  # noqa: D103 - documented in nandoctor.scan_api.scan
    from .scan_api import scan as _scan
    return _scan(*args, **kwargs)


def postmortem(*args, **kwargs):  # noqa: D103 - documented in nandoctor.postmortem.postmortem
    from .postmortem import postmortem as _postmortem
    return _postmortem(*args, **kwargs)


def watch(*args, **kwargs):  # noqa: D103 - documented in nandoctor.watcher.guard.watch
    from .watcher.guard import watch as _watch
    return _watch(*args, **kwargs)


def replay(*args, **kwargs):  # noqa: D103 - documented in nandoctor.replay_api.replay
    from .replay_api import replay as _replay
    return _replay(*args, **kwargs)


def __getattr__(name):
    # Lazy, so `import nandoctor` stays light: torch loads only when the watch is used.
    if name in ("NonFiniteError", "NonFiniteWarning"):
        from .watcher import guard
        return getattr(guard, name)
    raise AttributeError(f"module 'nandoctor' has no attribute {name!r}")


__all__ = ["scan", "postmortem", "watch", "replay", "NonFiniteError", "NonFiniteWarning", "__version__"]
