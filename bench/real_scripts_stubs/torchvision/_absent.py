"""Names that other packages import from torchvision at import time but the scripts never call."""
from __future__ import annotations


def absent(module: str, name: str):
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*args, **kwargs):
        raise RuntimeError(f"{module}.{name} is not part of the nandoctor torchvision stub")

    unavailable.__name__ = name
    return unavailable
