"""JSON round trip for the trace's dataclasses (non-finite floats travel as strings)."""
from __future__ import annotations

import dataclasses
import enum
import math
import typing
from typing import Any

def encode_float(value: float) -> Any:
    """JSON has no NaN/Infinity; non-finite floats travel as the strings "NaN", "Infinity", "-Infinity"."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def decode_float(value: Any) -> Any:
    if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
        return float(value.replace("Infinity", "inf"))
    return value


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, float):
        return encode_float(obj)
    return obj


def from_plain(tp: Any, data: Any) -> Any:
    if data is None:
        return None
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return from_plain(args[0], data) if len(args) == 1 else data
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        kwargs = {f.name: from_plain(hints[f.name], data[f.name])
                  for f in dataclasses.fields(tp) if f.name in data}
        return tp(**kwargs)
    if origin is list:
        (item,) = typing.get_args(tp)
        return [from_plain(item, v) for v in data]
    if origin is dict:
        _, item = typing.get_args(tp)
        return {k: from_plain(item, v) for k, v in data.items()}
    if tp is float:
        return decode_float(data)
    return decode_float(data) if isinstance(data, str) else data
