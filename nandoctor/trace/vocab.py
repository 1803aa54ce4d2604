"""The fixed vocabularies every stage shares: phases, run statuses, severities, precision
names, experiment ids, error categories, and the numeric limits of the floating dtypes.

One home for each fact. Nothing here imports torch: the dtype limits are IEEE constants, so
the diagnosis and the reports can reason about float16's range without loading torch.
"""
from __future__ import annotations

import enum
import math
from typing import Optional

SCHEMA_VERSION = 1


class Phase(str, enum.Enum):
    INIT = "init"
    DATA = "data"
    FORWARD = "forward"
    LOSS = "loss"
    BACKWARD = "backward"
    OPTIMIZER = "optimizer"


class RunStatus(str, enum.Enum):
    OK = "ok"                  # every requested step ran with finite loss, gradients, parameters
    NONFINITE = "nonfinite"    # a step produced NaN/Inf; the run stopped there
    ERROR = "error"            # the user's code raised; the run stopped there
    TIMEOUT = "timeout"        # --max-seconds ran out before all steps ran
    UNSUPPORTED = "unsupported"  # the precision cannot run on this device
    INTERRUPTED = "interrupted"  # Ctrl-C stopped the run

    @property
    def failed(self) -> bool:
        """A run in this state can never pass the gate, whatever the rules say."""
        return self in (RunStatus.NONFINITE, RunStatus.ERROR)


class Severity(str, enum.Enum):
    ERROR = "error"        # breaks training
    WARNING = "warning"    # a risk or a silent stall
    INFO = "info"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self.value]


_SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}
FAIL_ON = ("error", "warning", "never")


def severity_rank(severity: str) -> int:
    return _SEVERITY_RANK[str(severity)]


class ErrorCategory(str, enum.Enum):
    """Why a run stopped without finishing: a typed fact, so no rule reads exception text."""
    USER_CODE = "user-code"            # the user's code raised (any exception, SystemExit included)
    LABEL_GUARD = "label-guard"        # class targets outside [0, C): stopped before the loss indexed with them
    UNSUPPORTED = "unsupported"        # the torch backend cannot run this precision on this device
    TIME_BUDGET = "time-budget"        # --max-seconds ran out
    STEP_INTERRUPTED = "step-interrupted"  # the watchdog interrupted a step still running at the deadline
    USER_INTERRUPT = "user-interrupt"  # Ctrl-C


class ExperimentId(str, enum.Enum):
    LOWER_LR = "lower-lr"
    SANITISE_BATCH = "sanitise-batch"
    SKIP_BATCH = "skip-batch"
    STEP_FP32 = "step-fp32"
    STEP_BF16 = "step-bf16"
    STEP_FP64 = "step-fp64"
    CLIP_GRAD = "clip-grad"
    REINIT = "reinit"
    RAISE_EPS = "raise-eps"


class Precision(str, enum.Enum):
    """Lightning's precision names."""
    FP32 = "32-true"
    FP16_MIXED = "16-mixed"
    BF16_MIXED = "bf16-mixed"
    FP16_TRUE = "16-true"
    BF16_TRUE = "bf16-true"

    @property
    def compute_dtype(self) -> str:
        return {"32-true": "float32", "16-mixed": "float16", "16-true": "float16",
                "bf16-mixed": "bfloat16", "bf16-true": "bfloat16"}[self.value]

    @property
    def is_16bit(self) -> bool:
        return self is not Precision.FP32


PRECISION_ALIASES = {"fp32": Precision.FP32, "32": Precision.FP32, "fp16": Precision.FP16_MIXED,
                     "bf16": Precision.BF16_MIXED}
ACCEPTED_PRECISION_NAMES = [p.value for p in Precision] + list(PRECISION_ALIASES)
SIXTEEN_BIT = tuple(p.value for p in Precision if p.is_16bit)


def precision_from_name(name: object) -> Optional[Precision]:
    """A user-written precision name or alias -> Precision; None when unknown."""
    text = str(name).strip().lower()
    if text in PRECISION_ALIASES:
        return PRECISION_ALIASES[text]
    return next((p for p in Precision if p.value == text), None)


# IEEE limits of the floating dtypes, by torch's dtype name. `tiny` is the smallest normal
# number; below it values lose precision and below `subnormal` they flush to zero.
DTYPE_MAX = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38, "float32": 3.4028234663852886e38,
             "float64": 1.7976931348623157e308}
DTYPE_TINY = {"float16": 6.103515625e-05, "bfloat16": 1.1754943508222875e-38, "float32": 1.1754943508222875e-38,
              "float64": 2.2250738585072014e-308}
DTYPE_SUBNORMAL = {"float16": 5.960464477539063e-08, "bfloat16": 9.183549615799121e-41,
                   "float32": 1.401298464324817e-45, "float64": 5e-324}
DTYPE_EPS = {"float16": 0.0009765625, "bfloat16": 0.0078125, "float32": 1.1920928955078125e-07,
             "float64": 2.220446049250313e-16}
FP16_MAX = DTYPE_MAX["float16"]
FP16_TINY = DTYPE_TINY["float16"]


def compute_max(precision: str) -> float:
    """The largest finite value of the dtype a precision computes in."""
    found = precision_from_name(precision)
    return DTYPE_MAX[found.compute_dtype] if found else DTYPE_MAX["float32"]


def rounds_to_zero(value: float, dtype: str) -> bool:
    """Whether `value` is 0 once stored in `dtype` (half the smallest subnormal rounds to 0)."""
    return value != 0 and abs(value) < DTYPE_SUBNORMAL.get(dtype, 0.0) / 2 and math.isfinite(value)
