"""Scan configuration: defaults, validation, and discovery with per-key provenance.

Precedence, lowest first: built-in defaults < `[tool.nandoctor]` in ./pyproject.toml <
./nandoctor.yaml < `--config FILE` < command-line flags. `resolve_config` records where every
value came from so `nandoctor config` can show it.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ..errors import InputError
from ..trace.thresholds import DEFAULT_THRESHOLDS
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
    "fail_on": "error",
    "max_seconds": None,
    "experiments": {"enabled": True, "max_seconds": 60.0},
    "thresholds": dict(DEFAULT_THRESHOLDS),
}


def _precision_name(item: Any) -> str:
    found = precision_from_name(item)
    if found is None:
        raise InputError(f"unknown precision {item!r}; accepted values are {', '.join(ACCEPTED_NAMES)} "
                         "(fp32, fp16 and bf16 are aliases of 32-true, 16-mixed and bf16-mixed).")
    return found.value


# ---- validation ------------------------------------------------------------------------------

def _int(key: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"config key '{key}' must be an integer >= {minimum}, got {value!r}.")
    return value


def _number(key: str, value: Any, positive: bool = True) -> float:
    if isinstance(value, str):
        try:
            value = float(value)  # YAML reads "1e-3" as a string; accept it
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"config key '{key}' must be a finite number, got {value!r}.")
    if positive and value <= 0:
        raise InputError(f"config key '{key}' must be a number > 0, got {value!r}.")
    return float(value)


def _optional_number(key: str, value: Any) -> float | None:
    return None if value is None else _number(key, value)


def _choice(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise InputError(f"config key '{key}' must be one of {', '.join(choices)}, got {value!r}.")
        return value.lower()
    return check


def _device(key: str, value: Any) -> str:
    text = str(value).lower()
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise InputError(f"config key '{key}' must be auto, cpu, cuda or cuda:N, got {value!r}.")


def _precisions(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InputError(f"config key '{key}' must be a non-empty list of precisions "
                         f"({', '.join(ACCEPTED_NAMES)}), got {value!r}.")
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
        raise InputError(f"config key '{key}' must be dynamic, none or a positive number, got {value!r}.") from None


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
        raise InputError(f"config key '{key}' must be a list of two numbers in [0, 1), got {value!r}.")
    return [_number(key, v, positive=False) for v in value]


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"config key '{key}' must be true or false, got {value!r}.")
    return value


def _section(keys: dict[str, Callable[[str, Any], Any]], required: tuple[str, ...] = ()):
    def check(key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise InputError(f"config key '{key}' must be a mapping with keys {', '.join(keys)}, got {value!r}.")
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
    "seed": lambda k, v: _int(k, v, minimum=0),
    "device": _device,
    "optimizer": _section(OPTIMIZER_KEYS),
    "grad_clip": _optional_number,
    "loss_scale": _loss_scale,
    "init_scale": _number,
    "fail_on": _choice(FAIL_ON),
    "max_seconds": _optional_number,
    "experiments": _section({"enabled": _bool, "max_seconds": _number}),
    "thresholds": _section({name: _number for name in DEFAULT_THRESHOLDS}),
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
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "optimizer":
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
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"config file {path} cannot be read: {err}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InputError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]} "
                         f"({' '.join(str(err).split())}).") from None
    return {} if data is None else data


def _read_pyproject(path: Path) -> dict[str, Any] | None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise InputError(f"{path} cannot be read as TOML: {err}.") from None
    section = data.get("tool", {}).get("nandoctor")
    return section


def resolve_config(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                   cwd: str | Path | None = None) -> ResolvedConfig:
    """Merge defaults, discovered files, an explicit config file and flag overrides."""
    values = copy.deepcopy(DEFAULTS)
    sources = {key: "default" for key in _dotted_keys(values)}
    here = Path(cwd) if cwd else Path.cwd()
    pyproject = here / "pyproject.toml"
    if pyproject.is_file():
        section = _read_pyproject(pyproject)
        if section:
            _merge(values, validate(section, f"{pyproject} [tool.nandoctor]"), sources,
                   "pyproject.toml [tool.nandoctor]")
    discovered = here / "nandoctor.yaml"
    if discovered.is_file() and (config_file is None or Path(config_file).resolve() != discovered.resolve()):
        _merge(values, validate(_read_yaml(discovered), str(discovered)), sources, "nandoctor.yaml")
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
