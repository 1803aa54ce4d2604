"""Leaving one of nandoctor's torch function modes wherever it sits on torch's mode stack.

`TorchFunctionMode.__exit__` pops whatever mode is on top. Code that leaves a mode from a hook,
not from a `with` block (a forward hook, an engine callback, a watch closed by an exception),
can find another mode above its own (the user's, or another nandoctor probe's), or its own mode
taken off the stack for the moment by torch (inside that mode's handler, e.g. during a backward
started by `loss.backward()`, torch re-pushes it when the handler returns). A plain `__exit__`
would then pop the wrong mode, or leave ours behind for good.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack


def function_mode_on_stack(mode: TorchFunctionMode) -> bool:
    return any(m is mode for m in _get_current_function_mode_stack())


def leave_function_mode(mode: TorchFunctionMode) -> bool:
    """Take `mode` off torch's function mode stack, the modes above it staying in their order.
    False (nothing done) when it is not on the stack."""
    if not function_mode_on_stack(mode):
        return False
    above = []
    while True:
        top = torch._C._pop_torch_function_stack()
        if top is mode:
            break
        above.append(top)
    for other in reversed(above):
        torch._C._push_on_torch_function_stack(other)
    return True
