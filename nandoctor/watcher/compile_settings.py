"""How the watched model was compiled: the bundle manifest's `compile` field.

`nandoctor replay` replays a compiled run's failing step down torch.compile's ladder when its
eager replay stays finite (run/compile_ladder.py); this tells it the backend, mode and options the
run used. Read from torch.compile's own wrappers, never by running anything.
"""
from __future__ import annotations

import sys
from typing import Any, Optional

import torch


# The attribute under which a wrapper of `module._compiled_call_impl` keeps the compiled call.
WRAPPED_COMPILED_CALL = "_nandoctor_compiled_call"


def _backend_wrapper(callback: Any) -> Any:
    """Dynamo's callback chain ends at the wrapper torch.compile built for the backend."""
    for _ in range(8):
        if hasattr(callback, "compiler_name"):
            return callback
        inner = getattr(callback, "_torchdynamo_orig_backend", None)
        if inner is None or inner is callback:
            return None
        callback = inner
    return None


def _settings(context: Any) -> Optional[dict[str, Any]]:
    wrapper = _backend_wrapper(getattr(context, "callback", None))
    if wrapper is None:
        return None
    name = wrapper.compiler_name
    backend = name if isinstance(name, str) else getattr(name, "__name__", str(name))
    kwargs = dict(getattr(wrapper, "kwargs", None) or {})
    config = getattr(wrapper, "config", None)
    options = dict(config) if isinstance(config, dict) else dict(kwargs.get("options") or {})
    plain = {k: v for k, v in options.items() if isinstance(v, (bool, int, float, str, type(None)))}
    return {"backend": backend, "mode": kwargs.get("mode"), "options": plain}


def _context_of(module: torch.nn.Module) -> Any:
    context = getattr(module, "dynamo_ctx", None)      # torch.compile(module): an OptimizedModule
    if context is not None:
        return context
    compiled = getattr(module, "_compiled_call_impl", None)     # module.compile(): in place
    # `nandoctor run` wraps an in-place compiled call to see it from outside (script_guard.py).
    compiled = getattr(compiled, WRAPPED_COMPILED_CALL, compiled)
    for cell in getattr(compiled, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if hasattr(value, "callback"):
            return value
    return None


def compile_settings(model: Any) -> Optional[dict[str, Any]]:
    """{"backend", "mode", "options", "module"} when the model, or one of its submodules, was
    compiled with torch.compile (`module`: its path, "" for the model itself); None otherwise."""
    if "torch._dynamo" not in sys.modules or not isinstance(model, torch.nn.Module):
        return None
    for path, module in model.named_modules():
        context = _context_of(module)
        settings = _settings(context) if context is not None else None
        if settings is not None:
            return {**settings, "module": path}
    return None


def compiled_graphs() -> int:
    """How many graphs Dynamo has compiled in this process so far (0 before any torch.compile)."""
    if "torch._dynamo" not in sys.modules:
        return 0
    from torch._dynamo.utils import counters
    return int(counters["stats"].get("unique_graphs", 0))


def compiled_since(graphs_before: int) -> Optional[dict[str, Any]]:
    """A compiled training step the watch cannot see (torch.compile(train_step)): Dynamo compiled
    graphs since the watch began. Backend unknown (null; torch.compile's default is inductor)."""
    if compiled_graphs() <= graphs_before:
        return None
    return {"backend": None, "mode": None, "options": {}, "module": None}
