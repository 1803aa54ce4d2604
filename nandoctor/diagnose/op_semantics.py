"""What each aten op does at the edge of its inputs: the table the origin rules read.

Every aten op that can make NaN or Inf from finite inputs has one entry: its class, the
mechanism in words, and a fix written for that op. The classes:

- pole: finite input, infinite output at an isolated point (log 0, 1/0, 0 ** -0.5, atanh(1))
- domain: no real result (sqrt/log of a negative, acos(1.01), logdet of a matrix with a
  negative determinant, cholesky of a matrix that is not positive definite)
- overflow: the result exceeds the compute dtype's max (exp(89) in float32, x * y in float16)
- indeterminate: inf - inf, 0 * inf, 0 / 0, inf / inf
- empty-reduction: a mean over zero elements (0 / 0 with a count of 0)
- composite: a fused or decomposed op whose internals hit one of the above (ctc_loss with no
  alignment, weight_norm of a zero weight, a norm layer over zero variance, kl_div)
- mask: an op that consumes deliberate infinities (softmax, logsumexp over masked rows)

Nothing here touches torch: the classes are properties of the maths, and the rules decide
between them from the recorded input statistics (zeros, negatives, max |x|, inf carried in).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..trace import NonfiniteEvent, TensorSummary
from ..trace.vocab import DTYPE_MAX

POLE, DOMAIN, OVERFLOW, INDETERMINATE, EMPTY, COMPOSITE, MASK = (
    "pole", "domain", "overflow", "indeterminate", "empty-reduction", "composite", "mask")


@dataclass(frozen=True)
class OpSemantics:
    klass: str          # the class it belongs to when its inputs are finite
    edge: str           # where it fails, in words
    fix: str            # the change, for this op; `{here}` is replaced by " at file:line"


_LOG = OpSemantics(POLE, "log(0) = -inf and log of a negative is NaN",
                   "keep the argument positive{here}: `torch.log(x.clamp_min(1e-6))`, or use the fused stable form "
                   "(`torch.log_softmax`, `F.logsigmoid`, `torch.special.xlogy`)")
_LOG1P = OpSemantics(POLE, "log1p(-1) = -inf and log1p below -1 is NaN",
                     "keep the argument above -1{here}: clamp p in `log1p(-p)` to a bound below 1 that the dtype can "
                     "represent (1 - 1e-6 is 1.0 in float16 and bfloat16), or compute log(1 - sigmoid(z)) from the "
                     "logit: `F.logsigmoid(-z)`")
_CAST = OpSemantics(OVERFLOW, "a cast to a narrower float dtype turns values above its max into inf",
                    "the value cast{here} does not fit the narrower dtype (float16 max 65504): keep it in float32 "
                    "(`.float()`, not `.type_as(x)` / `.to(x.dtype)` of a 16-bit tensor) and cast down only bounded "
                    "results (cos/sin of positions, probabilities, normalised activations)")
_DIV = OpSemantics(POLE, "x / 0 = ±inf and 0 / 0 = NaN",
                   "the denominator{here} reaches 0: divide by `d.clamp_min(1e-6)` (or `d + 1e-6` for d >= 0), "
                   "or skip the term when the denominator is 0")
_RECIP = OpSemantics(POLE, "1 / 0 = inf", "guard the reciprocal{here}: `1 / x.clamp_min(1e-6)`, or mask the zero entries "
                                         "(`torch.where(x > 0, 1 / x.clamp_min(1e-6), 0)`)")
_SQRT = OpSemantics(DOMAIN, "sqrt of a negative is NaN",
                    "clamp the argument{here}: `torch.sqrt(x.clamp_min(0) + 1e-12)`; a variance computed as "
                    "E[x²] - E[x]² can round negative, use `torch.var` instead")
_RSQRT = OpSemantics(POLE, "rsqrt(0) = inf and rsqrt of a negative is NaN",
                     "add an epsilon inside{here}: `torch.rsqrt(x + 1e-5)` (as the norm layers do)")
_POW = OpSemantics(POLE, "0 ** negative = inf, a fractional power of a negative is NaN, large bases overflow",
                   "guard the base{here}: `x.clamp_min(1e-12) ** p` for negative p (isolated nodes with degree 0: "
                   "`deg.pow(-0.5).masked_fill(deg == 0, 0)`), `x.abs() ** p * x.sign()` for fractional p of signed x")
_INV_TRIG = OpSemantics(DOMAIN, "acos/asin outside [-1, 1] is NaN",
                        "clamp the argument{here}: `x.clamp(-1 + 1e-7, 1 - 1e-7)` (a cosine similarity rounds past 1)")
_ATANH = OpSemantics(POLE, "atanh(±1) = ±inf and outside [-1, 1] it is NaN",
                     "clamp the argument{here}: `x.clamp(-1 + 1e-6, 1 - 1e-6)` (a tanh-squashed action re-read as 1.0)")
_GAMMA = OpSemantics(POLE, "lgamma/digamma have poles at 0 and the negative integers",
                     "keep the argument positive{here}: `F.softplus(x) + 1e-4` for a concentration or shape parameter")
_EXP = OpSemantics(OVERFLOW, "exp overflows above ~88.7 in float32 (~11.1 in float16)",
                   "bound the exponent{here}: subtract the max first (`torch.exp(x - x.amax(-1, keepdim=True))`), clamp "
                   "it (`x.clamp(max=80)` for a log-variance), or use `torch.logsumexp` / `F.softplus` / `torch.softmax`")
_HYP = OpSemantics(OVERFLOW, "sinh/cosh overflow above ~89 in float32",
                   "use the stable form{here}: log(cosh(x)) = x + F.softplus(-2x) - log(2)")
_MUL = OpSemantics(OVERFLOW, "the product exceeds the compute dtype's max",
                   "bring the operands' scale down{here} (normalise the input, scale by 1/sqrt(d)), or compute this op "
                   "in float32 (`torch.autocast(device_type, enabled=False)`)")
_SUM = OpSemantics(OVERFLOW, "the sum of many large elements exceeds the compute dtype's max",
                   "reduce with a mean instead of a sum{here}, or accumulate in float32 (`x.float().sum()`)")
_MEAN = OpSemantics(EMPTY, "a mean over zero elements is 0 / 0 = NaN",
                    "guard the reduction{here} against selecting nothing: `x[mask].mean() if mask.any() else "
                    "x.sum() * 0.0`, or divide by `count.clamp_min(1)`")
_SOFTMAX = OpSemantics(MASK, "softmax over a row that is entirely -inf is NaN",
                       "fill masked positions with `torch.finfo(x.dtype).min` instead of -inf{here}")
_LOGSUMEXP = OpSemantics(MASK, "logsumexp of a row that is entirely -inf is -inf; its gradient is NaN",
                         "give every row at least one unmasked entry{here}, or use `torch.finfo(x.dtype).min` as the "
                         "mask value and drop rows with nothing selected")
_STD = OpSemantics(EMPTY, "the unbiased std/var of one element divides by n - 1 = 0",
                   "use `correction=0` (`unbiased=False`){here}, or reduce over more than one element")
_NORM_LAYER = OpSemantics(COMPOSITE, "a normalisation over values with zero variance divides by ~0 or its "
                          "hand-written variance goes negative",
                          "use the built-in layer (`nn.GroupNorm`, `nn.LayerNorm`) or `torch.var(..., unbiased=False) + eps` "
                          "inside the sqrt{here}")
_WEIGHT_NORM = OpSemantics(COMPOSITE, "weight_norm divides by ||v||, which is 0 for an all-zero weight",
                           "do not zero-initialise a weight-normalised layer{here}; initialise v with a small random "
                           "value, or drop weight_norm for that layer")
_CTC = OpSemantics(COMPOSITE, "CTC loss is inf when a target has no alignment (target longer than the input, or "
                   "repeated labels without room for blanks)",
                   "pass `zero_infinity=True` to `F.ctc_loss`/`nn.CTCLoss`{here}, and drop samples whose "
                   "input length < target length + repeats")
_LINALG = OpSemantics(DOMAIN, "logdet/cholesky/inverse/solve of a singular or non-positive-definite matrix",
                      "add a ridge to the matrix{here} (`A + 1e-4 * torch.eye(n)`), use `torch.linalg.slogdet` and "
                      "check the sign, or build the matrix as `B @ B.T + eps * I` so it is positive definite")
_KL = OpSemantics(COMPOSITE, "kl_div/xlogy of a zero probability against a -inf log-probability is 0 * -inf = NaN",
                  "mask the terms whose target probability is 0 before summing{here}, or use "
                  "`torch.finfo(x.dtype).min` instead of -inf in the log-probabilities")
_LOSS_LOG = OpSemantics(POLE, "binary cross-entropy takes log(p) and log(1 - p); at p = 0 or 1 that is -inf",
                        "pass logits to `F.binary_cross_entropy_with_logits` (or `nn.BCEWithLogitsLoss`){here} "
                        "instead of probabilities")
_ARITH = OpSemantics(INDETERMINATE, "inf - inf, 0 * inf and inf / inf are NaN",
                     "remove the infinity before the arithmetic{here}: use `torch.finfo(x.dtype).min` as a mask "
                     "value, or apply the mask with `masked_fill` after the arithmetic")

TABLE: dict[str, OpSemantics] = {
    **dict.fromkeys(("log", "log2", "log10", "logit", "xlogy", "special_xlog1py"), _LOG),
    "log1p": _LOG1P,
    **dict.fromkeys(("to_copy", "type_as", "half", "to"), _CAST),
    **dict.fromkeys(("div", "true_divide", "floor_divide", "fmod", "remainder", "addcdiv"), _DIV),
    "reciprocal": _RECIP, "sqrt": _SQRT, "rsqrt": _RSQRT,
    **dict.fromkeys(("pow", "float_power"), _POW),
    **dict.fromkeys(("acos", "asin", "arccos", "arcsin", "acosh"), _INV_TRIG),
    **dict.fromkeys(("atanh", "arctanh"), _ATANH),
    **dict.fromkeys(("lgamma", "digamma", "polygamma", "mvlgamma", "special_zeta", "erfinv"), _GAMMA),
    **dict.fromkeys(("exp", "exp2", "expm1", "softplus", "special_erfcx"), _EXP),
    **dict.fromkeys(("sinh", "cosh", "tan"), _HYP),
    **dict.fromkeys(("mul", "square", "mm", "bmm", "addmm", "baddbmm", "addbmm", "matmul", "linear", "convolution",
                     "mkldnn_convolution", "einsum", "prod", "cumprod", "mse_loss", "add", "sub", "rsub"), _MUL),
    **dict.fromkeys(("sum", "cumsum", "norm", "linalg_vector_norm", "nansum"), _SUM),
    **dict.fromkeys(("mean", "nll_loss_forward", "nll_loss2d_forward", "nll_loss", "cross_entropy_loss"), _MEAN),
    **dict.fromkeys(("std", "var", "std_mean", "var_mean"), _STD),
    **dict.fromkeys(("softmax", "log_softmax", "safe_softmax"), _SOFTMAX),
    "logsumexp": _LOGSUMEXP,
    **dict.fromkeys(("native_batch_norm", "native_layer_norm", "native_group_norm", "group_norm",
                     "batch_norm", "layer_norm"), _NORM_LAYER),
    **dict.fromkeys(("weight_norm_interface", "weight_norm"), _WEIGHT_NORM),
    **dict.fromkeys(("ctc_loss",), _CTC),
    **dict.fromkeys(("linalg_slogdet", "slogdet", "logdet", "det", "linalg_det", "linalg_cholesky_ex", "cholesky",
                     "linalg_inv_ex", "inverse", "linalg_solve_ex", "linalg_eigh"), _LINALG),
    **dict.fromkeys(("kl_div",), _KL),
    **dict.fromkeys(("binary_cross_entropy",), _LOSS_LOG),
}


# Ops that only materialise a constant: the NaN in one is put there by a decomposition
# (logdet's where(sign < 0, nan, ...)) or by the user's code, never by rounding.
CONSTANT_OPS = ("scalar_tensor", "full", "fill", "lift_fresh", "new_full")


def op_name(op: Optional[str]) -> str:
    """aten.log.default -> log; aten._softmax.default -> softmax; torch.logdet -> logdet."""
    if not op:
        return ""
    parts = op.split(".")
    name = parts[1] if parts[0] == "aten" and len(parts) > 1 else parts[-1]
    return name.lstrip("_").rstrip("_")


def semantics(event: NonfiniteEvent) -> Optional[OpSemantics]:
    """The table entry for the public call when there is one, else for the aten op."""
    for name in (op_name(event.call), op_name(event.op)):
        if name in TABLE:
            return TABLE[name]
    return None


def _tensors(event: NonfiniteEvent) -> list[TensorSummary]:
    return [t for t in event.inputs if t.value is None and t.name != "scalar"]


def _scalars(event: NonfiniteEvent) -> list[float]:
    return [t.value for t in event.inputs if t.value is not None]


def max_abs(t: TensorSummary) -> float:
    return max(abs(t.min or 0.0), abs(t.max or 0.0))


def carried_inf(event: NonfiniteEvent) -> bool:
    """An input already held inf (and no NaN): the op combined infinities, it did not make them."""
    return any(t.inf for t in event.inputs) or any(math.isinf(v) for v in _scalars(event))


def arrived_as_number(event: NonfiniteEvent) -> bool:
    """The NaN came into this op as a Python number (`.item()`, `float(t)`), so the op consumed
    it rather than made it. When the origin is the 0-dim op that made the converted value
    (`scalar_source` set, no NaN among the scalar arguments), the op's own inputs explain it."""
    return name_of(event) not in CONSTANT_OPS and any(math.isnan(v) for v in _scalars(event))


def name_of(event: NonfiniteEvent) -> str:
    return op_name(event.op)


def classify(event: NonfiniteEvent) -> Optional[tuple[str, str]]:
    """(class, mechanism in words with the measured numbers) for the origin op; None when the
    table does not know the op. Reads only the recorded input statistics."""
    entry = semantics(event)
    name = op_name(event.op)
    tensors = _tensors(event)
    masked = event.masked_input or event.mask_source is not None or any(t.masked for t in event.inputs)
    if name in CONSTANT_OPS and event.kind == "inf" and (carried_inf(event) or (event.output and event.output.inf)):
        return MASK, ("a -inf/inf constant (a mask value set by indexed assignment, `index_put_` or `torch.full`) "
                      "is where the trace stops; the op that sums or multiplies it downstream is the real failure")
    if masked:
        return MASK, f"{name} consumed a deliberate -inf mask and turned it into {event.kind.upper()}"
    if arrived_as_number(event):
        made_by = event.scalar_source.op if event.scalar_source else "a 0-dim computation"
        return INDETERMINATE, f"a NaN made by {made_by} reached {name} as a Python number (`.item()`, `float()`)"
    if carried_inf(event) and event.kind == "nan":
        return INDETERMINATE, f"{name} combined an infinite input into NaN (inf - inf, 0 * inf or inf / inf)"
    if entry is None and name in CONSTANT_OPS and any(math.isnan(v) for v in _scalars(event)):
        return COMPOSITE, (f"a NaN constant made inside {event.call or 'a composite op'}: the call has no defined "
                           "result for these inputs")
    if entry is None:
        return None
    zeros = sum(t.zeros for t in tensors)
    negatives = sum(t.negatives for t in tensors)
    dtype = tensors[0].dtype if tensors else "float32"
    limit = DTYPE_MAX.get(dtype, DTYPE_MAX["float32"])
    peak = max((max_abs(t) for t in tensors), default=0.0)
    if entry.klass == POLE and name in ("div", "true_divide") and len(tensors) >= 2 and tensors[1].zeros:
        if tensors[0].zeros and event.kind == "nan":
            return INDETERMINATE, f"0 / 0: the numerator and the denominator are both 0 ({tensors[1].zeros} zero denominators)"
        return POLE, f"division by 0: the denominator holds {tensors[1].zeros} zeros"
    if name in ("pow", "float_power"):
        exponent = next(iter(_scalars(event)), None)
        if exponent is not None and exponent < 0 and zeros:
            return POLE, f"0 ** {exponent:g} = inf: the base holds {zeros} zeros"
        if exponent is not None and negatives and exponent != int(exponent):
            return DOMAIN, f"a fractional power ({exponent:g}) of a negative base is NaN ({negatives} negatives)"
        return OVERFLOW, f"the power overflows {dtype} (base max |x| {peak:.3g}, {dtype} max {limit:.3g})"
    if entry is _CAST:
        target = event.output.dtype if event.output is not None else dtype
        if target in DTYPE_MAX:
            return OVERFLOW, (f"a cast to {target} turned values up to {peak:.6g} into inf "
                              f"({target} max {DTYPE_MAX[target]:.6g})")
        return OVERFLOW, entry.edge
    if entry is _LOG1P:                  # its pole is at -1, not 0: negatives above -1 are in its domain
        lowest = min((t.min for t in tensors if t.min is not None), default=None)
        if lowest is not None and lowest < -1 and event.kind == "nan":
            return DOMAIN, f"log1p below -1 is NaN (input min {lowest:.3g})"
        if lowest == -1:
            return POLE, "log1p at -1 is -inf: its input reached -1 exactly (log1p(-p) with p = 1)"
        return entry.klass, entry.edge
    if entry.klass in (POLE, DOMAIN) and negatives and event.kind == "nan":
        return DOMAIN, f"{name} of a negative value is NaN ({negatives} negatives, min {min(t.min or 0 for t in tensors):.3g})"
    if entry.klass == POLE and zeros:
        return POLE, f"{name} at 0 is infinite ({zeros} zeros in its input)"
    if entry.klass == OVERFLOW and event.kind == "nan":
        return INDETERMINATE, f"{name} made NaN from finite inputs: an inf - inf or 0 * inf inside it"
    if entry.klass == OVERFLOW:
        return OVERFLOW, f"{entry.edge}: the input reached max |x| {peak:.3g} in {dtype} (max {limit:.3g})"
    return entry.klass, entry.edge


def generic_arithmetic(event: NonfiniteEvent) -> bool:
    """A product, sum or matmul: when it overflows float32 the values it was given exploded,
    the op itself has no edge to guard (unlike exp or cosh)."""
    return semantics(event) in (_MUL, _SUM)


BUILTIN_NORMS = ("native_layer_norm", "native_batch_norm", "native_group_norm")


def fix_for(event: NonfiniteEvent, here: str, code: str = "") -> Optional[str]:
    """The table's fix for the op, adjusted to what the recorded facts show: an infinity carried
    into a product or sum is the indeterminate form's fix (never "scale by 1/sqrt(d)"); a
    built-in norm layer already has its eps; a line that already scales its operands is not
    told to scale them; an exp of a product or of a quotient gets the bounded form."""
    entry = semantics(event)
    if entry is None:
        return None
    mechanism = classify(event)
    producer = op_name(event.producer.op) if event.producer is not None else ""
    if entry in (_MUL, _SUM) and mechanism is not None and mechanism[0] == INDETERMINATE:
        entry = _ARITH
    elif op_name(event.op) in BUILTIN_NORMS:
        return (f"the norm layer{here} already adds its eps, and its input still made it non-finite: raise the "
                "layer's `eps` (e.g. `nn.LayerNorm(d, eps=1e-3)`) if the variance is ~0, run it in float32 "
                "(`norm(x.float()).to(x.dtype)`) under 16-bit autocast, or move it before the values grow (pre-norm)")
    elif entry is _MUL and ("sqrt(" in code or "scale" in code):
        return (f"the line{here} already scales its operands, and the product still exceeds the dtype's max: compute "
                "it in float32 (`torch.autocast(device_type, enabled=False)` and `.float()` operands), or normalise "
                "the operands first (a LayerNorm on queries and keys)")
    elif entry is _EXP and producer in ("mul", "bmm", "mm", "matmul", "einsum"):
        return (f"the exponent{here} is a product (e.g. `exp(dt * A)` in a state-space layer): keep it non-positive "
                "by construction, `A = -torch.exp(A_log)` with `dt = F.softplus(dt_raw)`, or clamp the product "
                "(`(dt * A).clamp(max=0)`) before the exp")
    elif entry is _EXP and producer in ("sub", "rsub"):
        return (f"the exponent{here} is a difference (a log-ratio such as PPO's `logp - logp_old`, an importance "
                "weight): clamp the difference before the exp, `torch.exp((a - b).clamp(-20, 20))`; subtracting "
                "the max would change the ratio itself")
    elif entry is _EXP and producer in ("div", "true_divide"):
        return (f"the exponent{here} is a quotient (a soft-cap or temperature `exp(x / c)`): cap with a bounded "
                "function instead, `c * torch.tanh(x / c)`, or compute it as `torch.softmax`/`F.softplus`, "
                "which never overflow")
    return entry.fix.replace("{here}", here)
