"""Import the user's model file and check it honours the model-file contract (README)."""
from __future__ import annotations

import ast
import contextlib
import importlib.util
import inspect
import sys
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Optional

from ..errors import InputError
from .script_signs import refuse_training_script
from .source import display_path

REQUIRED = ("build_model", "get_batch")
OPTIONAL = ("loss_fn", "build_optimizer", "build_scheduler", "training_step")


@dataclass
class ModelFile:
    path: Path
    module: ModuleType
    build_model: Callable[[], Any]
    get_batch: Callable[[int], Any]
    loss_fn: Optional[Callable[[Any, Any], Any]] = None
    build_optimizer: Optional[Callable[[Any], Any]] = None
    build_scheduler: Optional[Callable[[Any], Any]] = None
    # training_step(model, batch) -> loss: when present, run_step calls it with get_batch's
    # return value instead of forward + loss_fn (the replay of a crash bundle relies on it).
    training_step: Optional[Callable[[Any, Any], Any]] = None
    # restore_rng(step): puts every generator in the state the step started from; when present,
    # run_step calls it instead of re-seeding from (seed, step) (bundle replay restores captured states).
    restore_rng: Optional[Callable[[int], None]] = None

    @property
    def display(self) -> str:
        return display_path(str(self.path))


def load_model_file(path: str | Path, required: tuple[str, ...] = REQUIRED) -> ModelFile:
    """Import `path` as a fresh module; raise InputError naming the file and what is wrong.

    `required`: the contract functions that must exist (replay needs only build_model)."""
    path = Path(path)
    shown = display_path(str(path))
    if not path.exists():
        raise InputError(f"model file {shown} does not exist.")
    if path.is_dir():
        raise InputError(f"model file {shown} is a directory; pass the .py file that defines "
                         "build_model() and get_batch().")
    if path.suffix != ".py":
        raise InputError(f"model file {shown} is not a Python file (.py); nandoctor imports it and "
                         "calls its build_model() and get_batch().")
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"model file {shown} cannot be read: {err}.") from None
    try:
        tree = ast.parse(source, str(path))
        compile(tree, str(path), "exec")
    except (SyntaxError, ValueError) as err:
        line = getattr(err, "lineno", None)
        raise InputError(f"model file {shown} has a syntax error{f' at line {line}' if line else ''}: "
                         f"{getattr(err, 'msg', err)}.") from None
    if required == REQUIRED:
        refuse_training_script(tree, shown, REQUIRED)

    name = f"nandoctor_user_{path.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"model file {shown} cannot be imported as a Python module.")
    module = importlib.util.module_from_spec(spec)
    # The model file may import its neighbours (a local `layers.py`), as it would when run directly.
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        with model_file_argv(path):
            spec.loader.exec_module(module)
    except BaseException as err:  # noqa: BLE001 - any failure while importing user code is input error
        sys.modules.pop(name, None)
        if isinstance(err, KeyboardInterrupt):
            raise
        where = _innermost_line(err, path)
        raise InputError(f"importing model file {shown} raised {type(err).__name__}: {err}"
                         f"{where}. Fix the file so that `python {shown}` imports cleanly.") from None

    found = {fn: getattr(module, fn, None) for fn in REQUIRED + OPTIONAL}
    missing = [fn for fn in required if not callable(found[fn])]
    if missing and required != REQUIRED:
        raise InputError(f"model file {shown} does not define {' and '.join(f'{m}()' for m in missing)}.")
    if missing:
        raise InputError(
            f"model file {shown} does not define {' and '.join(f'{m}()' for m in missing)}. A model file must "
            "define build_model() -> torch.nn.Module and get_batch(step) -> (inputs, targets); "
            "loss_fn(outputs, targets) and build_optimizer(params) are optional.")
    for fn in OPTIONAL + tuple(f for f in REQUIRED if f not in required):
        if found[fn] is not None and not callable(found[fn]):
            raise InputError(f"model file {shown}: {fn} must be a function, got {type(found[fn]).__name__}.")
    if found["get_batch"] is not None:
        _check_arity(found["get_batch"], 1, "get_batch(step)", shown)
    if found["training_step"] is not None:
        _check_arity(found["training_step"], 2, "training_step(model, batch)", shown)
    if found["loss_fn"] is not None:
        _check_arity(found["loss_fn"], 2, "loss_fn(outputs, targets)", shown)
    return ModelFile(path=path, module=module, **found)  # type: ignore[arg-type]


@contextlib.contextmanager
def model_file_argv(path: str | Path) -> Iterator[None]:
    """`sys.argv` as `python MODEL.py` would set it, while the model file is imported and called:
    a module-level `parse_args()` then sees no argument of nandoctor's and names itself, not
    nandoctor, in its usage. The caller's argv comes back afterwards."""
    saved = sys.argv
    sys.argv = [str(path)]
    try:
        yield
    finally:
        sys.argv = saved


def _check_arity(fn: Callable, count: int, signature: str, shown: str) -> None:
    try:
        inspect.signature(fn).bind(*range(count))
    except TypeError:
        raise InputError(f"model file {shown}: {fn.__name__} must accept the arguments of {signature}.") from None
    except ValueError:  # builtins without a signature: let the call itself decide
        pass


def _innermost_line(err: BaseException, path: Path) -> str:
    target = str(path.resolve())
    lines = [f for f in traceback.extract_tb(err.__traceback__) if str(Path(f.filename).resolve()) == target]
    return f" at line {lines[-1].lineno}" if lines else ""
