"""A torch.compile backend for tests: AOTAutograd with one aten op's output replaced by NaN in the
compiled forward graph only (or, for NAME_BACKWARD, the backward graph only), as a miscompiling pass
would. Importing this module registers them."""
from __future__ import annotations

import torch
from torch._dynamo import register_backend
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func

NAME = "nandoctor_test_nan_mul"
NAME_BACKWARD = "nandoctor_test_nan_mul_backward"   # the same corruption in the backward graph only
CORRUPTED = torch.ops.aten.mul.Tensor


def _corrupt_first(gm: torch.fx.GraphModule, example_inputs):
    target = next((n for n in gm.graph.nodes if n.op == "call_function" and n.target is CORRUPTED), None)
    if target is not None:
        with gm.graph.inserting_after(target):
            poisoned = gm.graph.call_function(CORRUPTED, (target, float("nan")))
        target.replace_all_uses_with(poisoned, delete_user_cb=lambda user: user is not poisoned)
        gm.recompile()
    return make_boxed_func(gm.forward)


def _backward(gm: torch.fx.GraphModule, example_inputs):
    return make_boxed_func(gm.forward)


if NAME not in torch._dynamo.list_backends(exclude_tags=()):
    register_backend(aot_autograd(fw_compiler=_corrupt_first, bw_compiler=_backward), name=NAME)
    register_backend(aot_autograd(fw_compiler=_backward, bw_compiler=_corrupt_first), name=NAME_BACKWARD)
