"""The training script `nandoctor run` executes: a file (`run train.py ARGS`) or a module
(`run -m pkg.train ARGS`), checked before anything of it runs."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import InputError
from .source import display_path


@dataclass
class TrainingScript:
    path: Optional[Path]                 # the file (for -m: the module's file, when it has one)
    module: Optional[str] = None         # set for `-m MODULE`
    args: list[str] = field(default_factory=list)

    @property
    def argv0(self) -> str:
        """sys.argv[0] as Python sets it: the path as given, or the module's full path for -m."""
        return str(self.path) if self.path is not None else (self.module or "")

    @property
    def display(self) -> str:
        if self.module is not None:
            return f"-m {self.module}"
        return display_path(str(self.path))

    @property
    def command(self) -> list[str]:
        """The command line as the user would type it after `python`."""
        head = ["-m", self.module] if self.module is not None else [str(self.path)]
        return head + list(self.args)


def resolve_script(script: Optional[str], module: Optional[str], args: list[str]) -> TrainingScript:
    """Check that the script or module exists; nothing of it is executed here."""
    if (script is None) == (module is None):
        raise InputError("nandoctor run needs a training script (`nandoctor run train.py ARGS`) or a module "
                         "(`nandoctor run -m package.train ARGS`), not both and not neither.")
    if module is not None:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError) as err:
            raise InputError(f"cannot find module {module!r} to run ({err}); check the name and that its package "
                             "is importable from the working directory.") from None
        if spec is None:
            raise InputError(f"no module named {module!r} to run; check the name and that its package is importable "
                             "from the working directory.")
        origin = Path(spec.origin) if spec.origin and spec.origin not in ("built-in", "frozen") else None
        if spec.submodule_search_locations is not None and origin is not None:
            origin = origin.parent / "__main__.py"      # `python -m package` runs package/__main__.py
        return TrainingScript(path=origin, module=module, args=list(args))
    path = Path(script)
    if not path.exists():
        raise InputError(f"training script {script} does not exist (working directory: {Path.cwd()}).")
    if path.is_dir():
        main = path / "__main__.py"
        if not main.is_file():
            raise InputError(f"{script} is a directory without __main__.py; give the training script's file.")
        path = main
    if path.suffix not in (".py", ".pyw", "") and not _looks_like_python(path):
        raise InputError(f"{script} is not a Python file; nandoctor run executes Python training scripts "
                         "(`nandoctor run train.py ARGS`).")
    return TrainingScript(path=path, args=list(args))


def _looks_like_python(path: Path) -> bool:
    try:
        head = path.read_bytes()[:200]
    except OSError:
        return False
    return head.startswith(b"#!") and b"python" in head.split(b"\n", 1)[0]
