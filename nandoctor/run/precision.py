"""What each precision means for a run, in torch terms (the names live in trace/vocab.py)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from ..trace.vocab import ACCEPTED_PRECISION_NAMES, Precision, precision_from_name


@dataclass(frozen=True)
class PrecisionSpec:
    compute_dtype: torch.dtype      # the dtype matmuls run in
    autocast: bool                  # -mixed: torch.autocast around forward and loss
    cast_model: bool                # -true: parameters and floating inputs cast to compute_dtype
    uses_grad_scaler: bool          # only 16-mixed scales the loss

    @property
    def is_16bit(self) -> bool:
        return self.compute_dtype in (torch.float16, torch.bfloat16)


SPECS = {
    Precision.FP32: PrecisionSpec(torch.float32, autocast=False, cast_model=False, uses_grad_scaler=False),
    Precision.FP16_MIXED: PrecisionSpec(torch.float16, autocast=True, cast_model=False, uses_grad_scaler=True),
    Precision.BF16_MIXED: PrecisionSpec(torch.bfloat16, autocast=True, cast_model=False, uses_grad_scaler=False),
    Precision.FP16_TRUE: PrecisionSpec(torch.float16, autocast=False, cast_model=True, uses_grad_scaler=False),
    Precision.BF16_TRUE: PrecisionSpec(torch.bfloat16, autocast=False, cast_model=True, uses_grad_scaler=False),
}


def spec_of(precision: Precision) -> PrecisionSpec:
    return SPECS[precision]


def parse_precision(name: object) -> Precision:
    """Map a user-written precision name (or alias) to a Precision; unknown names are input errors."""
    found = precision_from_name(name)
    if found is None:
        raise InputError(
            f"unknown precision {name!r}; accepted values are {', '.join(ACCEPTED_PRECISION_NAMES)} "
            "(fp32, fp16 and bf16 are aliases of 32-true, 16-mixed and bf16-mixed).")
    return found


def autocast_precision(device_types: tuple[str, ...] = ("cuda", "cpu")) -> str | None:
    """The mixed precision of an autocast region the caller is inside ("bf16-mixed" or
    "16-mixed"), or None outside one. A loop's own `with torch.autocast(...)` is invisible to the
    model's parameters and to any scaler (bf16 uses none): only a forward can see it."""
    for device in device_types:
        try:
            if torch.is_autocast_enabled(device):
                dtype = torch.get_autocast_dtype(device)
                return Precision.BF16_MIXED.value if dtype == torch.bfloat16 else Precision.FP16_MIXED.value
        except (TypeError, RuntimeError, AttributeError):   # older torch: no per-device query
            continue
    return None
