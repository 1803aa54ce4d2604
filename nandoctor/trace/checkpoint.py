"""The checkpoint trace: plain records of what a saved checkpoint holds (postmortem)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class TensorRecord:
    name: str
    module: str
    shape: list[int]
    dtype: str
    numel: int
    nan: int = 0
    inf: int = 0
    max_abs: Optional[float] = None      # over finite values
    norm: Optional[float] = None         # over finite values
    negatives: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)   # DCP: the shards holding NaN/Inf (rank, offsets)


@dataclass
class OptimizerRecord:
    param: str
    key: str
    shape: list[int]
    nan: int = 0
    inf: int = 0
    negatives: int = 0
    max_abs: Optional[float] = None


@dataclass
class PostmortemTrace:
    path: str
    format: str
    step: Optional[int] = None
    epoch: Optional[int] = None
    tensors: list[TensorRecord] = field(default_factory=list)
    optimizer: list[OptimizerRecord] = field(default_factory=list)
    param_groups: list[dict[str, Any]] = field(default_factory=list)
    state_steps: list[float] = field(default_factory=list)
    scaler: Optional[dict[str, Any]] = None
    baseline: Optional[str] = None
    changes: list[dict[str, Any]] = field(default_factory=list)   # relative change vs baseline, largest first
    seconds: float = 0.0
    torch_version: str = ""
