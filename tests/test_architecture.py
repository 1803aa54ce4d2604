"""The pipeline's shape, enforced: which stage may import which, no import cycles, and the
torch-free stages really load without torch."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nandoctor"

# Stage -> the stages it may import. One direction: cli -> api -> {load, run} -> trace,
# trace <- diagnose <- report. `errors` and `_version` are leaves every stage may use.
ALLOWED = {
    "trace": {"trace"},
    "diagnose": {"diagnose", "trace"},
    "report": {"report", "diagnose", "trace", "errors", "_version"},
    "load": {"load", "trace", "errors"},
    "run": {"run", "load", "trace", "errors"},
    "watcher": {"watcher", "run", "load", "trace", "errors", "_version"},
    "integrations": {"integrations", "watcher", "run", "load", "trace", "errors"},
    "api": {"api", "load", "run", "trace", "diagnose", "report", "errors", "_version", "watcher"},
    "cli": {"cli", "api", "load", "report", "diagnose", "trace", "errors", "_version"},
    "__init__": {"api", "_version", "watcher", "errors"},
    "__main__": {"cli"},   # cli/entry.py: the executable
    "errors": set(),
    "_version": set(),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if "templates" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("nandoctor"):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in _MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nandoctor"))
    return {m for m in found if m in _MODULES}


_MODULES = _modules()


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_import_follows_the_pipeline_direction():
    wrong = []
    for name, path in _MODULES.items():
        stage = _stage(name)
        assert stage in ALLOWED, f"{name}: a module outside the known stages; add its stage to the layout"
        for target in _imports(name, path, top_level_only=False):
            if target == "nandoctor":
                continue
            if _stage(target) not in ALLOWED[stage]:
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports against the pipeline:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    # Imports inside functions count too: a lazy import only hides a circle from the interpreter.
    graph = {name: _imports(name, path, top_level_only=False) - {name} for name, path in _MODULES.items()}
    # A package's __init__ importing its own submodules is how packages re-export; not a cycle.
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif state.get(nxt) is None:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in graph:
        if state.get(name) is None:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_trace_diagnose_and_report_load_without_torch():
    code = ("import sys, json, pkgutil, importlib\n"
            "import nandoctor.trace, nandoctor.diagnose, nandoctor.report\n"
            "for pkg in (nandoctor.trace, nandoctor.diagnose, nandoctor.report):\n"
            "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
            "        importlib.import_module(m.name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert json.loads(out.stdout) == []
