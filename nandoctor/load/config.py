"""Scan configuration: defaults, validation, and discovery with per-key provenance.

Precedence, lowest first: built-in defaults < `[tool.nandoctor]` in pyproject.toml <
nandoctor.yaml < `--config FILE` < command-line flags. Both files are looked for in the working
directory and its parents up to the repository root (`discover`). `resolve_config` records where every
value came from so `nandoctor config` can show it.
"""
from __future__ import annotations

import copy
import math
import os
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


from ..errors import InputError
from ..trace.compile import LADDER_STAGES
from ..trace.thresholds import DEFAULT_THRESHOLDS
from ..trace.warnings import EARLY_WARNING_DEFAULTS, SPIKE_DEFAULTS
from ..trace.vocab import ACCEPTED_PRECISION_NAMES as ACCEPTED_NAMES, FAIL_ON, precision_from_name

OPTIMIZER_NAMES = ("adamw", "adam", "sgd", "rmsprop", "adagrad")

DEFAULTS: dict[str, Any] = {
    "steps": 20,
    "precisions": ["32-true", "16-mixed", "bf16-mixed"],
    "seed": 0,
    "device": "auto",
    "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0},
    "grad_clip": None,
    "loss_scale": "dynamic",
    "init_scale": 65536.0,
    "compile": False,
    "fail_on": "error",
    "max_seconds": None,
    "threads": "auto",
    # restart_over_mib: `nandoctor run` keeps no step-0 rewind file of a state over this many MiB; its
    # lr experiments run the script again from its start instead (0: always)
    "experiments": {"enabled": True, "max_seconds": 60.0, "restart_over_mib": 64.0},
    # replay of a compiled run whose failing step stays finite in eager (cause compile-numerics)
    "compile_ladder": {"enabled": True, "stages": list(LADDER_STAGES), "bisect": True},
    "thresholds": dict(DEFAULT_THRESHOLDS),
    "spikes": dict(SPIKE_DEFAULTS),
    "early_warnings": dict(EARLY_WARNING_DEFAULTS),
    # what `nandoctor run` does on a non-finite step or a spike (its --on-nonfinite, --on-spike and
    # --rollback-* flags override these); the watch and the callbacks take the same as arguments
    "policies": {"on_nonfinite": "stop", "on_spike": "warn",
                 "rollback": {"every": 50, "keep": 2, "budget": 3, "back": 0, "to": "cpu"}},
}


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 60, 60, 2, 6, 6
SEED_MAX = 2**63 - 1     # torch.manual_seed's range


def _show(value: Any) -> str:
    """A config value as it appears in a message: bounded, so an aliased YAML structure a few
    bytes long cannot become a message of megabytes."""
    return _REPR.repr(value)


def _precision_name(item: Any) -> str:
    found = precision_from_name(item)
    if found is None:
        raise InputError(f"unknown precision {_show(item)}; accepted values are {', '.join(ACCEPTED_NAMES)} "
                         "(fp32, fp16 and bf16 are aliases of 32-true, 16-mixed and bf16-mixed).")
    return found.value


# ---- validation ------------------------------------------------------------------------------

def _int(key: str, value: Any, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum \
            or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise InputError(f"config key '{key}' must be an integer {bound}, got {_show(value)}.")
    return value


def _nonnegative(key: str, value: Any) -> float:
    number = _number(key, value, positive=False)
    if number < 0:
        raise InputError(f"config key '{key}' must be a number >= 0, got {_show(value)}.")
    return number


def _number(key: str, value: Any, positive: bool = True) -> float:
    if isinstance(value, str):
        try:
            value = float(value)  # YAML reads "1e-3" as a string; accept it
        except ValueError:
            pass
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 1e308:
        value = math.inf      # an integer beyond float range
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"config key '{key}' must be a finite number, got {_show(value)}.")
    if positive and value <= 0:
        raise InputError(f"config key '{key}' must be a number > 0, got {_show(value)}.")
    return float(value)


def _optional_number(key: str, value: Any) -> float | None:
    return None if value is None else _number(key, value)


def _choice(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise InputError(f"config key '{key}' must be one of {', '.join(choices)}, got {_show(value)}.")
        return value.lower()
    return check


def _device(key: str, value: Any) -> str:
    text = str(value).lower()
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise InputError(f"config key '{key}' must be auto, cpu, cuda or cuda:N, got {_show(value)}.")


def _threads(key: str, value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise InputError(f"config key '{key}' must be auto or a whole number of threads >= 1, got {_show(value)}.")


def _precisions(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InputError(f"config key '{key}' must be a non-empty list of precisions "
                         f"({', '.join(ACCEPTED_NAMES)}), got {_show(value)}.")
    names: list[str] = []
    for item in value:
        try:
            name = _precision_name(item)
        except InputError as err:
            raise InputError(f"config key '{key}': {err}") from None
        if name not in names:
            names.append(name)
    return names


def _loss_scale(key: str, value: Any) -> str | float:
    if isinstance(value, str) and value.lower() in ("dynamic", "none"):
        return value.lower()
    try:
        return _number(key, value)
    except InputError:
        raise InputError(f"config key '{key}' must be dynamic, none or a positive number, got {_show(value)}.") from None


OPTIMIZER_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "name": _choice(OPTIMIZER_NAMES),
    "lr": _number,
    "weight_decay": lambda k, v: _number(k, v, positive=False),
    "momentum": lambda k, v: _number(k, v, positive=False),
    "eps": _number,
    "betas": lambda k, v: _betas(k, v),
    "nesterov": lambda k, v: _bool(k, v),
    "alpha": _number,
}


def _betas(key: str, value: Any) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InputError(f"config key '{key}' must be a list of two numbers in [0, 1), got {_show(value)}.")
    return [_number(key, v, positive=False) for v in value]


def _compile(key: str, value: Any) -> bool | str:
    """false, true (torch.compile's default backend, inductor) or a backend's name."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", value.strip()):
        return value.strip()
    raise InputError(f"config key '{key}' must be false, true or a torch.compile backend name "
                     f"(inductor, aot_eager, eager, ...), got {_show(value)}.")


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"config key '{key}' must be true or false, got {_show(value)}.")
    return value


def _ladder_stages(key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v in LADDER_STAGES for v in value):
        raise InputError(f"config key '{key}' must be a list of compiler stages out of {', '.join(LADDER_STAGES)} "
                         f"(in that order), got {_show(value)}.")
    return [s for s in LADDER_STAGES if s in value]


def _section(keys: dict[str, Callable[[str, Any], Any]], required: tuple[str, ...] = ()):
    def check(key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise InputError(f"config key '{key}' must be a mapping with keys {', '.join(keys)}, got {_show(value)}.")
        out: dict[str, Any] = {}
        for sub, sub_value in value.items():
            if sub not in keys:
                raise InputError(f"unknown config key '{key}.{sub}'; accepted keys under '{key}' are "
                                 f"{', '.join(keys)}.")
            out[sub] = keys[sub](f"{key}.{sub}", sub_value)
        for sub in required:
            if sub not in out:
                raise InputError(f"config key '{key}' needs '{sub}'.")
        return out
    return check


TOP_LEVEL: dict[str, Callable[[str, Any], Any]] = {
    "steps": lambda k, v: _int(k, v, minimum=1),
    "precisions": _precisions,
    "seed": lambda k, v: _int(k, v, minimum=0, maximum=SEED_MAX),
    "device": _device,
    "optimizer": _section(OPTIMIZER_KEYS),
    "grad_clip": _optional_number,
    "loss_scale": _loss_scale,
    "init_scale": _number,
    "compile": _compile,
    "fail_on": _choice(FAIL_ON),
    "max_seconds": _optional_number,
    "threads": _threads,
    "experiments": _section({"enabled": _bool, "max_seconds": _number,
                              "restart_over_mib": _nonnegative}),
    "compile_ladder": _section({"enabled": _bool, "stages": _ladder_stages, "bisect": _bool}),
    "thresholds": _section({name: _number for name in DEFAULT_THRESHOLDS}),
    "spikes": _section({"enabled": lambda k, v: _bool(k, v), "window": lambda k, v: _int(k, v, minimum=4),
                        "warmup": lambda k, v: _int(k, v, minimum=1), "threshold_sigma": _number,
                        "min_ratio": _number}),
    "early_warnings": _section({"enabled": lambda k, v: _bool(k, v), "every": lambda k, v: _int(k, v, minimum=1),
                                "samples": lambda k, v: _int(k, v, minimum=2),
                                **{name: _number for name in EARLY_WARNING_DEFAULTS
                                   if name not in ("enabled", "every", "samples")}}),
    "policies": _section({"on_nonfinite": _choice(("stop", "skip", "rollback")),
                          "on_spike": _choice(("warn", "skip", "rollback")),
                          "rollback": _section({"every": lambda k, v: _int(k, v, minimum=1),
                                                "keep": lambda k, v: _int(k, v, minimum=1),
                                                "budget": lambda k, v: _int(k, v, minimum=0),
                                                "back": lambda k, v: _int(k, v, minimum=0),
                                                "to": _choice(("cpu", "disk"))})}),
}


def validate(values: dict[str, Any], origin: str) -> dict[str, Any]:
    """Check one layer of configuration (a file, flags) and return it normalised."""
    if not isinstance(values, dict):
        raise InputError(f"{origin}: the configuration must be a mapping of keys to values, got "
                         f"{type(values).__name__}.")
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in TOP_LEVEL:
            raise InputError(f"{origin}: unknown config key '{key}'; accepted keys are "
                             f"{', '.join(TOP_LEVEL)}.")
        try:
            out[key] = TOP_LEVEL[key](key, value)
        except InputError as err:
            raise InputError(f"{origin}: {err}") from None
    return out


# ---- discovery and merging ---------------------------------------------------------------------

@dataclass
class ResolvedConfig:
    values: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)   # dotted key -> where it came from

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


def _merge(base: dict[str, Any], layer: dict[str, Any], sources: dict[str, str], origin: str,
           prefix: str = "") -> None:
    """Lay `layer` over `base` key by key: a partial section (`optimizer: {lr: 0.01}`) changes only
    the keys it names. A layer that picks another optimizer `name` drops the settings lower layers
    gave the previous optimizer (momentum is not an AdamW setting), keeping lr and weight_decay."""
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            if key == "optimizer" and not prefix and value.get("name", base[key].get("name")) != base[key].get("name"):
                for sub in [s for s in base[key] if s not in ("name", "lr", "weight_decay")]:
                    del base[key][sub]
                    sources.pop(f"{dotted}.{sub}", None)
            _merge(base[key], value, sources, origin, dotted + ".")
        else:
            base[key] = copy.deepcopy(value)
            sources[dotted] = origin
            if isinstance(value, dict):
                for sub in value:
                    sources[f"{dotted}.{sub}"] = origin


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist.") from None
    except IsADirectoryError:
        raise InputError(f"config file {path} is a directory.") from None
    except UnicodeDecodeError:
        raise InputError(f"config file {path} is not UTF-8 text.") from None
    except OSError as err:
        raise InputError(f"config file {path} cannot be read: {err.strerror or err}.") from None
    import yaml          # only when there is a file to read: a run without one never imports it
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InputError(f"config file {path} is not valid YAML{_yaml_where(err)}: {_yaml_problem(err)}.") from None
    except RecursionError:
        raise InputError(f"config file {path} nests too deeply to be a configuration.") from None
    return {} if data is None else data


def _yaml_where(err: Exception) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _yaml_problem(err: Exception) -> str:
    """The problem in words, without PyYAML's own '<unicode string>' location lines."""
    parts = [getattr(err, "context", None), getattr(err, "problem", None)]
    text = "; ".join(str(p) for p in parts if p) or str(err).splitlines()[0]
    return text[:300]


def _read_pyproject(path: Path) -> dict[str, Any] | None:
    """The `[tool.nandoctor]` table of a pyproject.toml, or None when it has none."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the tomli backport (a dependency there)
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise InputError(f"{path} has to be read for [tool.nandoctor], which needs the tomli package on "
                             "Python < 3.11: pip install tomli.") from None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path} is not valid TOML: {str(err)[:300]}.") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text.") from None
    except OSError as err:
        raise InputError(f"{path} cannot be read: {err.strerror or err}.") from None
    tool = data.get("tool")
    if tool is None:
        return None
    if not isinstance(tool, dict):
        raise InputError(f"{path}: 'tool' must be a table ([tool.nandoctor]), got {_show(tool)}.")
    section = tool.get("nandoctor")
    if section is not None and not isinstance(section, dict):
        raise InputError(f"{path}: [tool.nandoctor] must be a table of config keys, got {_show(section)}.")
    return section


def discover(start: Path) -> tuple[Path | None, Path | None]:
    """The nearest pyproject.toml holding [tool.nandoctor] and the nearest nandoctor.yaml, looking
    in `start` and its parents up to the repository root (the first folder holding .git) or the
    filesystem root, as ruff and pytest do."""
    pyproject = yaml_file = None
    folder = start.resolve()
    while True:
        candidate = folder / "pyproject.toml"
        if pyproject is None and candidate.is_file() and _read_pyproject(candidate) is not None:
            pyproject = candidate
        if yaml_file is None and (folder / "nandoctor.yaml").is_file():
            yaml_file = folder / "nandoctor.yaml"
        if (pyproject and yaml_file) or (folder / ".git").exists() or folder.parent == folder:
            return pyproject, yaml_file
        folder = folder.parent


def resolve_config(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                   cwd: str | Path | None = None) -> ResolvedConfig:
    """Merge defaults, discovered files, an explicit config file and flag overrides."""
    values = copy.deepcopy(DEFAULTS)
    sources = {key: "default" for key in _dotted_keys(values)}
    here = Path(cwd) if cwd else Path.cwd()
    pyproject, discovered = discover(here)
    if pyproject is not None:
        section = _read_pyproject(pyproject)
        shown = os.path.relpath(pyproject, here.resolve())
        _merge(values, validate(section or {}, f"{shown} [tool.nandoctor]"), sources,
               f"{shown} [tool.nandoctor]")
    if discovered is not None and (config_file is None or Path(config_file).resolve() != discovered.resolve()):
        shown = os.path.relpath(discovered, here.resolve())
        _merge(values, validate(_read_yaml(discovered), shown), sources, shown)
    if config_file is not None:
        path = Path(config_file)
        _merge(values, validate(_read_yaml(path), str(path)), sources, f"--config {path}")
    if overrides:
        flags = {k: v for k, v in overrides.items() if v is not None}
        lr = flags.pop("lr", None)
        layer = validate(flags, "command line")
        _merge(values, layer, sources, "command line")
        if lr is not None:
            values["optimizer"]["lr"] = _number("--lr", lr)
            sources["optimizer.lr"] = "command line"
    return ResolvedConfig(values, sources)


def _dotted_keys(values: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys.extend(_dotted_keys(value, prefix + key + "."))
    return keys
