"""The precision vocabulary: Lightning's names, their aliases, and what each one means for a run."""
from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from .errors import InputError


class Precision(str, enum.Enum):
    FP32 = "32-true"
    FP16_MIXED = "16-mixed"
    BF16_MIXED = "bf16-mixed"
    FP16_TRUE = "16-true"
    BF16_TRUE = "bf16-true"

    @property
    def spec(self) -> "PrecisionSpec":
        return _SPECS[self]


@dataclass(frozen=True)
class PrecisionSpec:
    compute_dtype: torch.dtype      # the dtype matmuls run in
    autocast: bool                  # -mixed: torch.autocast around forward and loss
    cast_model: bool                # -true: parameters and floating inputs cast to compute_dtype
    uses_grad_scaler: bool          # only 16-mixed scales the loss

    @property
    def is_16bit(self) -> bool:
        return self.compute_dtype in (torch.float16, torch.bfloat16)


_SPECS = {
    Precision.FP32: PrecisionSpec(torch.float32, autocast=False, cast_model=False, uses_grad_scaler=False),
    Precision.FP16_MIXED: PrecisionSpec(torch.float16, autocast=True, cast_model=False, uses_grad_scaler=True),
    Precision.BF16_MIXED: PrecisionSpec(torch.bfloat16, autocast=True, cast_model=False, uses_grad_scaler=False),
    Precision.FP16_TRUE: PrecisionSpec(torch.float16, autocast=False, cast_model=True, uses_grad_scaler=False),
    Precision.BF16_TRUE: PrecisionSpec(torch.bfloat16, autocast=False, cast_model=True, uses_grad_scaler=False),
}

ALIASES = {"fp32": Precision.FP32, "32": Precision.FP32, "fp16": Precision.FP16_MIXED,
           "bf16": Precision.BF16_MIXED}
ACCEPTED_NAMES = [p.value for p in Precision] + list(ALIASES)


def parse_precision(name: object) -> Precision:
    """Map a user-written precision name (or alias) to a Precision; unknown names are input errors."""
    text = str(name).strip().lower()
    if text in ALIASES:
        return ALIASES[text]
    for precision in Precision:
        if precision.value == text:
            return precision
    raise InputError(
        f"unknown precision {name!r}; accepted values are {', '.join(ACCEPTED_NAMES)} "
        "(fp32, fp16 and bf16 are aliases of 32-true, 16-mixed and bf16-mixed)."
    )


def dtype_max(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max)
