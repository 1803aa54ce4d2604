"""A compiled run's failing step replayed down torch.compile's ladder (trace/compile.py).

Each stage runs the whole step again from the same state (a fresh TrainingSession: weights,
optimizer, scaler and generators as the step began) with the model compiled by one backend:
Dynamo alone (`eager`), + AOTAutograd (`aot_eager`), + Inductor's decompositions and partitioner
(`aot_eager_decomp_partition`), `inductor`, then inductor with one numerics flag. The first
stage that goes non-finite names the compiler layer. Its op is then found on the graphs Dynamo
captured in that stage: ever shorter prefixes of a graph are compiled by the same backend until
the first node whose compiled value is non-finite while its eager value is finite; the node's
`stack_trace` meta names the user's line. Finally a standalone repro (the prefix graph as a
module, its inputs saved beside it) is written for a PyTorch bug report (run/compile_repro.py).
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.fx

from ..load.model_file import ModelFile
from ..trace import CompileCulprit, CompileReplay, CompileStage, SourceLocation
from ..trace.compile import INDUCTOR, INDUCTOR_NUMERICS_FLAGS, LADDER_STAGES
from ..trace.vocab import Precision
from .frames import is_library, location


@dataclass
class CapturedGraph:
    """One graph Dynamo handed the backend, with its inputs as they were when it ran."""
    gm: torch.fx.GraphModule
    inputs: list[Any]


@dataclass
class _Stage:
    name: str
    backend: str
    config: dict[str, Any] = field(default_factory=dict)
    graphs: list[CapturedGraph] = field(default_factory=list)
    module_prefix: str = ""         # path of the compiled submodule: Dynamo's paths start below it


def recorded_stage_name(backend: str) -> str:
    return f"recorded: {backend}"


def stage_backend(backend: str, config: dict[str, Any]) -> Callable[..., Any]:
    """The Dynamo backend callable of a stage; Inductor's flags go in as its config patches."""
    if backend == INDUCTOR:
        from torch._inductor.compile_fx import compile_fx

        def inductor(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
            return compile_fx(gm, example_inputs, config_patches=dict(config))
        return inductor
    from torch._dynamo.backends.registry import lookup_backend
    return lookup_backend(backend)


def _copy_input(value: Any) -> Any:
    # Parameters are graph inputs (Dynamo lifts them); the optimizer step later moves them, so the
    # graph's inputs are kept as they were when the graph ran.
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    return value


def _capturing(stage: _Stage) -> Callable[..., Any]:
    inner = stage_backend(stage.backend, stage.config)

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        stage.graphs.append(CapturedGraph(gm, [_copy_input(v) for v in example_inputs]))
        return inner(gm, example_inputs)
    return backend


def _nonfinite(value: Any) -> bool:
    tensors = [v for v in (value if isinstance(value, (tuple, list)) else [value]) if isinstance(v, torch.Tensor)]
    return any(t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()) for t in tensors)


# ---- running the step under one stage -----------------------------------------------------------------

def _compile_in_place(model: torch.nn.Module, module_path: Optional[str], backend: Callable[..., Any]) -> None:
    """Compile what the run compiled: the submodule at `module_path` ("" or None: the whole model),
    in place, so the session's model, names and optimizer stay as they are."""
    try:
        target = model.get_submodule(module_path) if module_path else model
    except AttributeError:
        target = model
    target.compile(backend=backend)


def _run_stage(stage: _Stage, spec: ModelFile, cfg: dict[str, Any], precision: Precision, device: torch.device,
               step: int, initial_state: Optional[Callable[[Any], None]], module_path: Optional[str] = None) -> CompileStage:
    from .session import TrainingSession
    import torch._dynamo
    began = time.perf_counter()
    torch._dynamo.reset()       # no graph or guard of an earlier stage is reused
    out = CompileStage(name=stage.name, backend=stage.backend, config=dict(stage.config))
    try:
        session = TrainingSession(spec, cfg, precision, device, initial_state=initial_state)
        if module_path:             # the run compiled one submodule: compile that one, in place
            _compile_in_place(session.model, module_path, _capturing(stage))
        else:
            # The session keeps its eager module for names and hooks; the forward goes through this.
            session.compiled_model = torch.compile(session.model, backend=_capturing(stage))
            session.compile_forward()
        result = session.run_step(step)
    except Exception as err:     # a backend that cannot compile this model: the stage could not run
        out.finite, out.where = None, f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    else:
        if result.error is not None:
            out.finite, out.where = None, f"{result.error.type}: {result.error.message[:200]}"
        else:
            out.finite = result.failure is None
            out.where = result.failure or ""
            if result.event is not None and result.event.detail and result.failure:
                out.where = f"{result.failure}: {result.event.detail[:160]}"
    finally:
        torch._dynamo.reset()
    out.seconds = time.perf_counter() - began
    return out


def ladder_stages(recorded: dict[str, Any], names: Optional[list[str]] = None) -> list[_Stage]:
    """eager -> aot_eager -> aot_eager_decomp_partition -> inductor (with the run's own options),
    or the configured subset, and the run's own backend last when it is none of these."""
    backend = str(recorded.get("backend") or INDUCTOR)
    options = dict(recorded.get("options") or {})
    mode = recorded.get("mode")
    if backend == INDUCTOR and mode:
        try:
            import torch._inductor
            options = {**torch._inductor.list_mode_options(mode), **options}
        except (RuntimeError, KeyError, AttributeError):
            pass
    chosen = [n for n in LADDER_STAGES if names is None or n in names]
    stages = [_Stage(name, name, options if name == INDUCTOR else {}) for name in chosen]
    if backend not in chosen:
        stages.append(_Stage(recorded_stage_name(backend), backend, options if backend == INDUCTOR else {}))
    return stages


# ---- the ladder -------------------------------------------------------------------------------------

def compile_ladder(spec: ModelFile, cfg: dict[str, Any], precision: Precision, device: torch.device, step: int,
                   recorded: dict[str, Any], initial_state: Optional[Callable[[Any], None]] = None,
                   repro_at: Optional[Any] = None, deadline: Any = None,
                   stage_names: Optional[list[str]] = None, bisect: bool = True) -> CompileReplay:
    """Replay `step` under each stage until one goes non-finite, then the Inductor flags after a
    failing inductor stage; locate the op and write the repro (`repro_at`: the path prefix)."""
    began = time.perf_counter()
    replay = CompileReplay(recorded=dict(recorded))
    failing: Optional[_Stage] = None
    stages = ladder_stages(recorded, stage_names)
    for stage in stages:
        stage.module_prefix = str(recorded.get("module") or "")
        if deadline is not None and deadline.expired:
            replay.note = "--max-seconds ran out before every stage ran"
            break
        outcome = _run_stage(stage, spec, cfg, precision, device, step, initial_state, recorded.get("module"))
        replay.stages.append(outcome)
        if outcome.finite is False:
            failing = stage
            replay.first_failing = stage.name
            finite = [s.name for s in replay.stages if s.finite]
            replay.last_finite = finite[-1] if finite else None
            break
        stage.graphs.clear()
    if failing is None:
        broken = [f"{s.name} ({s.where})" for s in replay.stages if s.finite is None]
        replay.note = replay.note or ("every stage that ran kept the step finite; could not run: " + "; ".join(broken)
                                      if broken else "every compiler stage kept the step finite: the compiler does "
                                      "not explain it")
        replay.seconds = time.perf_counter() - began
        return replay
    replay.avoid, replay.avoid_stage = _avoidance(replay, failing, spec, cfg, precision, device, step, initial_state,
                                                  recorded.get("module"))
    located = locate_culprit(failing) or locate_backward_culprit(failing)
    if located is not None:
        replay.culprit, graph = located
    else:
        graph = None
        replay.note = (f"no op of the captured graphs goes non-finite alone under {failing.name} (forward, or "
                       "backward with unit gradients): the repro holds the first whole graph")
    if replay.culprit is not None and graph is not None and failing.backend == INDUCTOR:
        replay.culprit.kernel = inductor_kernel(failing, graph, repro_at)
        if bisect and (deadline is None or not deadline.expired):
            replay.culprit.component = bisect_component(failing, graph, replay.culprit.phase)
    if repro_at is not None:
        from .compile_repro import write_repro
        target = graph or _first_nonfinite_graph(failing)
        if target is not None:
            try:
                replay.repro, replay.repro_inputs = write_repro(repro_at, target, failing.backend, failing.config,
                                                                replay.culprit)
            except (OSError, RuntimeError) as err:     # torch.save reports an unwritable folder as either
                replay.note = f"the repro could not be written next to the bundle ({err})"
    replay.seconds = time.perf_counter() - began
    return replay


def _avoidance(replay: CompileReplay, failing: _Stage, spec: ModelFile, cfg: dict[str, Any], precision: Precision,
               device: torch.device, step: int, initial_state: Any,
               module_path: Optional[str]) -> tuple[str, Optional[str]]:
    """The smallest setting that keeps the step finite: one Inductor flag when inductor is the
    first failing stage and the flag helps; else the last finite stage's backend."""
    if failing.backend == INDUCTOR:
        for flag in INDUCTOR_NUMERICS_FLAGS:
            if failing.config.get(flag):
                continue
            stage = _Stage(f"{INDUCTOR}+{flag}", INDUCTOR, {**failing.config, flag: True})
            outcome = _run_stage(stage, spec, cfg, precision, device, step, initial_state, module_path)
            replay.stages.append(outcome)
            if outcome.finite:
                return f"torch._inductor.config.{flag} = True", stage.name
    if replay.last_finite is None:
        return "", None
    last = next(s for s in replay.stages if s.name == replay.last_finite)
    return f'torch.compile(model, backend="{last.backend}")', last.name


# ---- the op: prefix bisection on the captured graphs ------------------------------------------------------

def _eager_values(gm: torch.fx.GraphModule, inputs: list[Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}

    class Recording(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            value = super().run_node(n)
            values[n.name] = value
            return value
    with torch.no_grad():
        Recording(gm).run(*inputs)
    return values


def prefix_graph(gm: torch.fx.GraphModule, upto: torch.fx.Node) -> torch.fx.GraphModule:
    """The graph's placeholders and nodes up to `upto`, returning `upto`'s value alone."""
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "output":
            break
        env[node] = graph.node_copy(node, lambda n: env[n])
        if node is upto:
            break
    graph.output((env[upto],))
    prefix = torch.fx.GraphModule(gm, graph)
    prefix.graph.eliminate_dead_code()
    prefix.recompile()
    return prefix


def _compiled_value(stage: _Stage, gm: torch.fx.GraphModule, inputs: list[Any]) -> Any:
    """`gm` compiled by the stage's backend and run on `inputs` (copies: a backend may mutate them)."""
    args = [_copy_input(v) for v in inputs]
    compiled = stage_backend(stage.backend, stage.config)(gm, args)
    with torch.enable_grad():
        return compiled(*args)


def _candidates(gm: torch.fx.GraphModule, eager: dict[str, Any]) -> list[torch.fx.Node]:
    """Nodes whose eager value is a finite floating tensor: where a compiled NaN can be born."""
    out = []
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        value = eager.get(node.name)
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() and not _nonfinite(value):
            out.append(node)
    return out


def _bad(stage: _Stage, graph: CapturedGraph, node: torch.fx.Node) -> bool:
    try:
        return _nonfinite(_compiled_value(stage, prefix_graph(graph.gm, node), graph.inputs))
    except Exception:        # a prefix the backend cannot compile on its own counts as not located
        return False


def locate_culprit(stage: _Stage) -> Optional[tuple[CompileCulprit, CapturedGraph]]:
    """The first node, in the first graph whose compiled forward goes non-finite, whose compiled
    value is non-finite while its eager value is finite."""
    for index, graph in enumerate(stage.graphs):
        try:
            eager = _eager_values(graph.gm, graph.inputs)
        except Exception:
            continue
        nodes = _candidates(graph.gm, eager)
        if not nodes:
            continue
        hi = next((i for i in range(len(nodes) - 1, -1, -1) if _bad(stage, graph, nodes[i])), None) \
            if not _bad(stage, graph, nodes[-1]) else len(nodes) - 1
        if hi is None:
            continue
        lo = 0
        while lo < hi:           # the first bad prefix, taking badness as monotone along the graph
            mid = (lo + hi) // 2
            if _bad(stage, graph, nodes[mid]):
                hi = mid
            else:
                lo = mid + 1
        node = nodes[hi]
        culprit = CompileCulprit(graph=index, node=node.name, op=_op_name(node), phase="forward",
                                 location=user_line(node), found_by="graph prefix bisection",
                                 module=module_path(node, stage.module_prefix))
        return culprit, CapturedGraph(prefix_graph(graph.gm, node), graph.inputs)
    return None


def single_op_graph(node: torch.fx.Node, eager: dict[str, Any]) -> tuple[torch.fx.GraphModule, list[Any]]:
    """`node` alone: each tensor it reads becomes an input holding its eager value."""
    graph = torch.fx.Graph()
    inputs: list[Any] = []
    placeholders: dict[torch.fx.Node, torch.fx.Node] = {}

    def as_input(arg: torch.fx.Node) -> Any:
        value = eager.get(arg.name)
        if not isinstance(value, torch.Tensor):
            return value
        if arg not in placeholders:
            placeholders[arg] = graph.placeholder(f"in_{arg.name}")
            leaf = value.detach().clone()
            inputs.append(leaf.requires_grad_(leaf.is_floating_point()))
        return placeholders[arg]
    args = torch.fx.map_arg(node.args, as_input)
    kwargs = torch.fx.map_arg(node.kwargs, as_input)
    graph.output((graph.create_node(node.op, node.target, args, kwargs, name=node.name),))
    return torch.fx.GraphModule(torch.nn.Module(), graph), inputs


def _backward_nonfinite(fn: Callable[..., Any], inputs: list[Any]) -> Optional[bool]:
    """Whether the gradients of `fn`'s output (cotangent ones) reaching its inputs are non-finite."""
    args = [_copy_input(v) for v in inputs]
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    with torch.enable_grad():
        out = fn(*args)
        out = out[0] if isinstance(out, (tuple, list)) else out
        if not leaves or not isinstance(out, torch.Tensor) or not out.requires_grad:
            return None
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out), allow_unused=True)
    return _nonfinite([g for g in grads if g is not None])


def locate_backward_culprit(stage: _Stage, budget_s: float = 60.0) -> Optional[tuple[CompileCulprit, CapturedGraph]]:
    """The forward stays finite: each op of the captured graphs alone, compiled by the stage's
    backend, differentiated with unit cotangents; the first whose compiled backward is non-finite
    while eager's is finite (ops in order, within `budget_s`)."""
    began = time.perf_counter()
    for index, graph in enumerate(stage.graphs):
        try:
            eager = _eager_values(graph.gm, graph.inputs)
        except Exception:
            continue
        for node in _candidates(graph.gm, eager):
            if time.perf_counter() - began > budget_s:
                return None
            try:
                single, inputs = single_op_graph(node, eager)
                if _backward_nonfinite(single, inputs) is not False:
                    continue        # eager's backward is non-finite too, or there is none
                compiled = stage_backend(stage.backend, stage.config)(single, [_copy_input(v) for v in inputs])
                if not _backward_nonfinite(compiled, inputs):
                    continue
            except Exception:
                continue
            culprit = CompileCulprit(graph=index, node=node.name, op=_op_name(node), phase="backward",
                                     location=user_line(node), found_by="single-op backward",
                                     module=module_path(node, stage.module_prefix))
            return culprit, CapturedGraph(single, inputs)
    return None


_KERNEL = re.compile(r"^(\w+) = async_compile\.(?:cpp_pybinding|cpp|triton)\(", re.MULTILINE)


def inductor_kernel(stage: _Stage, graph: CapturedGraph, save_at: Optional[Any]) -> str:
    """The generated kernel that computes the culprit's value (the last one of the reduced graph's
    code) and where that code was saved (`<bundle>-compile-repro-inductor-code.py`)."""
    from torch._inductor.utils import run_and_get_code
    import torch._inductor.config as inductor_config
    try:
        with inductor_config.patch(fx_graph_cache=False):      # a cache hit would generate no code
            _, codes = run_and_get_code(lambda: _compiled_value(stage, graph.gm, graph.inputs))
    except Exception:
        return ""
    names = [name for code in codes for name in _KERNEL.findall(code)]
    if not names:
        return ""
    where = ""
    if save_at is not None:
        path = Path(save_at).with_name(Path(save_at).name + "-compile-repro-inductor-code.py")
        try:
            path.write_text("\n\n".join(codes), encoding="utf-8")
            where = f" (generated code: {path})"
        except OSError:
            pass
    return f"generated kernel {names[-1]}{where}"


def bisect_component(stage: _Stage, graph: CapturedGraph, phase: str) -> str:
    """PyTorch's own CompilerBisector on the reduced graph: which Inductor subsystem (a graph pass,
    a lowering, a config) and which application of it makes the value non-finite."""
    import io
    import contextlib
    import torch._inductor.config as inductor_config
    from torch._inductor.compiler_bisector import CompilerBisector

    def finite() -> bool:
        torch._dynamo.reset()
        with inductor_config.patch(stage.config):
            # torch.compile asks the bisector which backend and subsystems to use.
            compiled = torch.compile(graph.gm)
            if phase == "backward":
                return _backward_nonfinite(compiled, graph.inputs) is not True
            return not _nonfinite(compiled(*[_copy_input(v) for v in graph.inputs]))
    try:
        with contextlib.redirect_stdout(io.StringIO()):      # the bisector narrates on stdout
            result = CompilerBisector.do_bisect(finite)
    except Exception:
        return ""
    finally:
        torch._dynamo.reset()
    if result is None:
        return ""
    text = f"compiler bisector: {result.backend}"
    if result.subsystem:
        text += f", {result.subsystem}"
        if result.bisect_number:
            text += f" application #{result.bisect_number}"
        if result.debug_info and result.debug_info != result.subsystem:
            text += f" ({result.debug_info})"
    return text


def _first_nonfinite_graph(stage: _Stage) -> Optional[CapturedGraph]:
    """The repro's graph when no op was located: the first graph whose compiled forward is non-finite."""
    for graph in stage.graphs:
        try:
            if _nonfinite(_compiled_value(stage, graph.gm, graph.inputs)):
                return graph
        except Exception:
            continue
    return stage.graphs[0] if stage.graphs else None


def _op_name(node: torch.fx.Node) -> str:
    target = node.target
    if node.op == "call_method":
        return f"Tensor.{target}"
    if isinstance(target, str):
        return target
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", None) or str(target)
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    if module.startswith("torch._C._nn") or module == "torch._C._nn":
        return f"torch.nn.functional.{name}"
    if isinstance(target, torch._ops.OpOverload):
        return f"aten.{target.__name__}"
    return f"{module}.{name}" if module else name


_ROOT = re.compile(r"^L\['[^']+'\]\.?")
_INDEXED = re.compile(r"\._modules\['([^']+)'\]|\[(\d+)\]")


def module_path(node: torch.fx.Node, prefix: str = "") -> str:
    """The innermost module that ran the node, as a path in the model ("blocks.0.lin"): Dynamo's
    `nn_module_stack` meta names it from the compiled frame's `self` (L['self'].blocks.0.lin)."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    if not stack:
        return prefix
    raw = str(stack[-1][0])
    path = _INDEXED.sub(lambda m: f".{m.group(1) or m.group(2)}", _ROOT.sub("", raw)).strip(".")
    return ".".join(p for p in (prefix, path) if p)


def user_line(node: torch.fx.Node) -> Optional[SourceLocation]:
    """The innermost user frame of the node's `stack_trace` (Dynamo records the Python stack)."""
    trace = node.meta.get("stack_trace") or ""
    frames = []
    lines = trace.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith('File "') and ", line " in stripped:
            path = stripped[len('File "'):stripped.index('", line ')]
            rest = stripped[stripped.index('", line ') + len('", line '):]
            number, _, func = rest.partition(", in ")
            if number.isdigit():
                frames.append((path, int(number), func, lines[i + 1].strip() if i + 1 < len(lines) else ""))
    user = [f for f in frames if not is_library(f[0])] or frames
    if not user:
        return None
    path, line, func, code = user[-1]
    found = location(path, line, func)
    if found is not None and not found.code:
        found.code = code
    return found
