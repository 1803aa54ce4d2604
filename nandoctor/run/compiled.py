"""torch.compile, seen from nandoctor's hooks: which parts of a model run compiled, and the
names the user wrote (without the `_orig_mod` segment of torch.compile's wrapper).

nandoctor's checks never enter a compiled graph. A hook that dynamo traces (a module inside a
compiled model, an optimizer step inside a compiled train step) returns at once when
`compiling()`: dynamo evaluates that as a constant, so the hook adds no op, no graph break and
no guard that changes from step to step. Hooks whose presence changes from step to step
(per-layer statistics) are never put on modules that run compiled: dynamo guards on a module's
hooks, so adding and removing them would recompile the user's graph.
"""
from __future__ import annotations

from typing import Any

import torch

from ..load.bundle import COMPILE_WRAPPER_ATTR, user_name

__all__ = ["compiling", "is_wrapper", "uncompiled", "has_compiled_parts", "user_name", "user_named_modules",
           "user_named_parameters", "user_state_dict"]


def compiling() -> bool:
    """True while dynamo traces the calling code (a hook then must add nothing to the graph)."""
    return torch.compiler.is_compiling()


def is_wrapper(module: Any) -> bool:
    """torch.compile(module)'s OptimizedModule: a wrapper whose `_orig_mod` is the user's module."""
    return isinstance(getattr(module, COMPILE_WRAPPER_ATTR, None), torch.nn.Module)


def uncompiled(model: Any) -> Any:
    """The user's module inside torch.compile's wrapper(s); the model itself otherwise."""
    for _ in range(4):
        if not is_wrapper(model):
            break
        model = getattr(model, COMPILE_WRAPPER_ATTR)
    return model


def has_compiled_parts(model: torch.nn.Module) -> bool:
    """Whether any of the model's modules runs compiled: a torch.compile wrapper, or a module
    compiled in place with `module.compile()`."""
    return any(is_wrapper(m) or getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def user_named_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """named_modules() as the user wrote them: compile wrappers left out, their paths cleaned."""
    return [(user_name(name), m) for name, m in model.named_modules() if not is_wrapper(m)]


def user_named_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(user_name(name), p) for name, p in model.named_parameters()]


def user_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """model.state_dict() with clean keys: a bundle from `watch(torch.compile(model))` loads into
    the plain model that `build_model()` returns."""
    return {user_name(key): value for key, value in model.state_dict().items()}
