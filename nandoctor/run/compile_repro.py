"""The standalone repro of a compile-only NaN: one script and its saved inputs, for a PyTorch bug report.

The script holds the graph Dynamo captured (cut after the op that went non-finite, when it was
located) as a plain nn.Module, loads the graph's inputs (weights included: Dynamo lifts them to
inputs) with `torch.load(weights_only=True)`, runs it in eager and compiled with the failing
stage's backend and flags, and exits 1 while the compiled result is non-finite and the eager one
finite. It needs torch only, and nothing of nandoctor.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Optional

import torch
import torch.fx

from ..trace import CompileCulprit

_TEMPLATE = '''"""Compile-only NaN/Inf: {headline}

Written by `nandoctor replay` from {source}. The graph below is what torch.compile's Dynamo
captured from the model{cut}; its inputs (weights included) are in {inputs_name}.
Eager stays finite; torch.compile(backend={backend!r}){flags} makes it non-finite.

    python {script_name}      # exit 1: reproduced; exit 0: finite (not reproduced)
"""
import sys
from pathlib import Path

import torch
import torch._inductor.config
{imports}

BACKEND = {backend!r}
INDUCTOR_CONFIG = {config!r}     # torch._inductor.config flags of the failing stage
INPUTS = Path(__file__).with_name({inputs_name!r})
REQUIRES_GRAD = {requires_grad!r}


class Repro(torch.nn.Module):
{body}


def nonfinite(module, args):
    """What is non-finite: the outputs, then the inputs' gradients (unit output gradients)."""
    out = module(*args)
    outs = [o for o in (out if isinstance(out, (tuple, list)) else [out])
            if isinstance(o, torch.Tensor) and o.is_floating_point()]
    bad = ["output %d" % i for i, o in enumerate(outs) if not bool(torch.isfinite(o).all())]
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    differentiable = [o for o in outs if o.requires_grad]
    if leaves and differentiable:
        grads = torch.autograd.grad(differentiable, leaves, [torch.ones_like(o) for o in differentiable],
                                    allow_unused=True)
        bad += ["gradient of input %d" % i for i, g in enumerate(grads)
                if g is not None and not bool(torch.isfinite(g).all())]
    return bad


def inputs():
    loaded = torch.load(INPUTS, weights_only=True)
    return [t.clone().requires_grad_(g) if isinstance(t, torch.Tensor) else t for t, g in zip(loaded, REQUIRES_GRAD)]


def main():
    print("torch", torch.__version__)
    eager = nonfinite(Repro(), inputs())
    with torch._inductor.config.patch(INDUCTOR_CONFIG):
        compiled = nonfinite(torch.compile(Repro(), backend=BACKEND, fullgraph=True), inputs())
    print("eager: " + ("non-finite " + ", ".join(eager) if eager else "finite"))
    print("compiled (%s): " % BACKEND + ("non-finite " + ", ".join(compiled) if compiled else "finite"))
    return 1 if compiled and not eager else 0


if __name__ == "__main__":
    sys.exit(main())
'''


def _cut(culprit: Optional[CompileCulprit]) -> str:
    if culprit is None:
        return ""
    if culprit.phase == "backward":
        return f", reduced to node {culprit.node} ({culprit.op}) alone, whose compiled backward goes non-finite"
    return f", cut after node {culprit.node} ({culprit.op})"


def write_repro(prefix: Any, graph: Any, backend: str, config: dict[str, Any],
                culprit: Optional[CompileCulprit]) -> tuple[str, str]:
    """Write `<prefix>-compile-repro.py` and `<prefix>-compile-repro-inputs.pt`; their paths."""
    prefix = Path(prefix)
    script = prefix.with_name(prefix.name + "-compile-repro.py")
    saved = prefix.with_name(prefix.name + "-compile-repro-inputs.pt")
    gm: torch.fx.GraphModule = graph.gm
    code = gm.graph.python_code(root_module="self")
    from torch.fx.graph_module import _format_import_block
    from torch.package import sys_importer
    imports = "\n".join(line for line in _format_import_block(code.globals, sys_importer).splitlines()
                        if line.strip() != "import torch")
    body = textwrap.indent(code.src.strip("\n"), "    ")
    headline = (f"{culprit.op} at {culprit.location}" if culprit is not None and culprit.location is not None
                else culprit.op if culprit is not None else "a captured graph")
    flags = "".join(f", torch._inductor.config.{k}={v!r}" for k, v in config.items())
    text = _TEMPLATE.format(headline=headline, source=prefix.name, backend=backend, config=dict(config), flags=flags,
                            cut=_cut(culprit),
                            inputs_name=saved.name, script_name=script.name, imports=imports, body=body,
                            requires_grad=[bool(getattr(v, "requires_grad", False)) for v in graph.inputs])
    tensors = [v.detach().cpu().contiguous() if isinstance(v, torch.Tensor) else v for v in graph.inputs]
    torch.save(tensors, saved)
    script.write_text(text, encoding="utf-8")
    return str(script), str(saved)
