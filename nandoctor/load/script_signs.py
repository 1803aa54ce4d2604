"""Tell a training script from a model file by reading its syntax tree, before importing it.

`nandoctor scan train.py` on an ordinary training script used to import it: the script's own
argparse then read nandoctor's arguments and printed its usage under nandoctor's name, or its
module-level loop started training inside the scan. A script is recognised without running a
line of it: it lacks a contract function (`build_model`, `get_batch`) and shows the signs of a
program rather than a library: a `__main__` block, argparse, `.backward()`, an optimizer's or a
GradScaler's `.step()`, or a `Trainer(...)` with `.fit()`/`.train()`.

A file missing a contract function would fail after its import anyway, so refusing it early
never turns away a file that scan could have used; the only change is that its side effects
never run and the message says what to do instead.
"""
from __future__ import annotations

import ast
import shlex
from typing import Optional

from ..errors import InputError


def bound_names(tree: ast.Module) -> Optional[set[str]]:
    """Names the module binds at import time (defs, assignments, imports), or None when a
    `from x import *` makes them unknowable. Bodies of functions and classes are not entered;
    `if`/`try`/`with` blocks at module level are, since they run on import."""
    names: set[str] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                pending.extend(getattr(node, field, None) or [])
    return names


def _dotted(node: ast.AST) -> str:
    """`self.optimizer` for an attribute chain, `optimizers` for `optimizers[0]`; "" otherwise."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}".lstrip(".")
    if isinstance(node, ast.Subscript):
        return _dotted(node.value)
    return ""


def _is_main_guard(node: ast.AST) -> bool:
    if not (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1
            and isinstance(node.test.ops[0], ast.Eq)):
        return False
    sides = [node.test.left, *node.test.comparators]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and \
        any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)


def script_signs(tree: ast.Module) -> list[tuple[str, int]]:
    """The signs of a program, each (what, line), first occurrence of each kind, in line order."""
    found: dict[str, int] = {}
    trainer_line: Optional[int] = None
    fit_line: Optional[int] = None

    def note(what: str, line: int) -> None:
        found.setdefault(what, line)

    for node in ast.walk(tree):
        if _is_main_guard(node):
            note('an `if __name__ == "__main__":` block', node.lineno)
        elif isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
            note("argparse", node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "argparse":
            note("argparse", node.lineno)
        elif isinstance(node, ast.Call):
            func = node.func
            name = _dotted(func)
            last = name.rsplit(".", 1)[-1]
            if isinstance(func, ast.Attribute) and func.attr in ("parse_args", "parse_known_args"):
                note("argparse", node.lineno)
            elif isinstance(func, ast.Attribute) and func.attr == "backward":
                note("a `.backward()` call", node.lineno)
            elif isinstance(func, ast.Attribute) and func.attr == "step":
                receiver = _dotted(func.value).rsplit(".", 1)[-1].lower()
                if "opt" in receiver or "scaler" in receiver:
                    note("an optimizer `.step()` call", node.lineno)
            elif isinstance(func, ast.Attribute) and func.attr in ("fit", "train"):
                # `model.train()` is a mode switch, not a sign by itself: it counts only next to
                # a Trainer(...) in the same file (checked below).
                fit_line = node.lineno if fit_line is None else min(fit_line, node.lineno)
            if last.endswith("Trainer"):
                trainer_line = node.lineno if trainer_line is None else min(trainer_line, node.lineno)
    if trainer_line is not None and fit_line is not None:
        note("a `Trainer(...)` with `.fit()`/`.train()`", fit_line)
    return sorted(found.items(), key=lambda item: item[1])


def refuse_training_script(tree: ast.Module, shown: str, required: tuple[str, ...]) -> None:
    """Raise InputError (exit 2) when the file is a training script rather than a model file."""
    names = bound_names(tree)
    if names is None:
        return
    missing = [fn for fn in required if fn not in names]
    if not missing:
        return
    signs = script_signs(tree)
    if not signs:
        return
    what = ", ".join(f"{sign} at line {line}" for sign, line in signs)
    lacking = " or ".join(("get_batch(step)" if fn == "get_batch" else f"{fn}()") for fn in missing)
    command = shlex.quote(shown)
    raise InputError(
        f"{shown} is a training script, not a model file: it does not define {lacking}, and it has the "
        f"signs of a script ({what}), so nandoctor did not import it. To run it as it is and stop at its "
        f"first NaN/Inf, use `nandoctor run {command} [ARGS...]` (the script's own arguments after its "
        f"name). To gate CI with `nandoctor scan`, write a model file that defines build_model() -> "
        "torch.nn.Module and get_batch(step) -> (inputs, targets) (optional: loss_fn, build_optimizer, "
        "build_scheduler, training_step); `nandoctor init` writes a commented template.")
