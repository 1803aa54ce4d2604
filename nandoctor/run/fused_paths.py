"""torch's fused inference fast paths, and what makes a call leave them.

`nn.MultiheadAttention` and `nn.TransformerEncoderLayer` / `nn.TransformerEncoder` run a fused
kernel in eval mode with nothing to differentiate, unless "some Tensor argument has
torch_function": any active TorchFunctionMode sends them down the slow path. The two paths do
not give the same numbers (the fast path turns a fully padded row into NaN, the slow path into
zeros), so nandoctor's own function modes step aside for such a call.
"""
from __future__ import annotations

import torch

FAST_PATH_TYPES = (torch.nn.MultiheadAttention, torch.nn.TransformerEncoderLayer, torch.nn.TransformerEncoder)


def may_take_fast_path(module: torch.nn.Module) -> bool:
    """Whether this call may run a fused inference fast path (torch's own checks decide the
    rest): an attention or encoder module in eval mode with nothing to differentiate."""
    if not isinstance(module, FAST_PATH_TYPES) or module.training:
        return False
    return not torch.is_grad_enabled() or not any(p.requires_grad for p in module.parameters())
