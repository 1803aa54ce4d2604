"""An exception raised by the user's code."""
from __future__ import annotations

from ...trace import ErrorCategory
from ..facts import user_line
from ..finding import Finding, Severity
from .base import Context, Rule


class UserCodeError(Rule):
    """What it detects: an exception raised by the user's own code during a training step
    (build_model, get_batch, forward, loss, backward, optimizer).

    Why it produces NaN or Inf: it does not; it stops training. It is reported so the scan
    explains every precision run it could not finish, pointing at the user's line.

    Evidence used: the exception's type and message and the user frames of its traceback.

    How to fix: as the message says, at the reported line. An error only in the 16-true or
    bf16-true runs usually means forward creates float32 tensors (`torch.zeros(n)`) that
    meet low-precision ones: create them with `dtype=x.dtype, device=x.device`. A constant
    that does not fit a 16-bit dtype (`masked_fill(mask, -1e9)` on float16 scores raises
    "value cannot be converted to type at::Half without overflow") gets `torch.finfo(x.dtype).min`
    as its fix, the mask value that follows the tensor's dtype; a `ZeroDivisionError` (a warmup
    factor `step / warmup_steps` with warmup_steps = 0) gets `max(1, n)`.

    Example: `RuntimeError: mat1 and mat2 must have the same dtype` in a bf16-true run.

    Thresholds: none; the exception is a fact. Confidence 0.9 (the user's line is where it was
    raised, not always where the bug is).
    """

    id = "user-error"
    title = "the model's code raised an exception"

    def check(self, ctx: Context) -> list[Finding]:
        errors = [r for r in ctx.trace.runs if r.error is not None and r.error.category == ErrorCategory.USER_CODE.value]
        if not errors:
            return []
        by_message: dict[str, list] = {}
        for run in errors:
            assert run.error is not None
            by_message.setdefault(f"{run.error.exc_type}: {run.error.message}", []).append(run)
        findings = []
        for message, runs in by_message.items():
            err = runs[0].error
            loc = user_line(err.user_source) or user_line(err.source)
            library = err.source if err.source is not None and err.source.library else None
            true_only = all(r.precision.endswith("-true") and r.precision != "32-true" for r in runs)
            dtype_clash = "dtype" in message or "scalar type" in message
            # torch's check on a Python scalar written into a narrower tensor (masked_fill, fill_, index_put_)
            constant_overflow = "cannot be converted to type" in message and "without overflow" in message
            fix = f"fix the exception raised at {loc}" if loc else "fix the exception raised in the model file"
            if true_only and dtype_clash:
                fix = (f"{loc or 'forward'} mixes dtypes under pure 16-bit weights: create tensors with "
                       "`dtype=x.dtype` (not `.float()` or default float32), or do not use "
                       + "/".join(r.precision for r in runs) + " for this model")
            if err.exc_type == "ZeroDivisionError":
                fix = (f"a Python divisor at {loc or 'the raising line'} is 0, often a count from the config "
                       "(warmup_steps = 0, total_steps - warmup_steps = 0, an empty epoch): divide by `max(1, n)`, "
                       "or skip the term when n is 0")
            if constant_overflow:
                fix = (f"the constant at {loc or 'the raising line'} does not fit the tensor's dtype under "
                       + "/".join(r.precision for r in runs) + " (float16 max 65504): write the mask value as "
                       "`torch.finfo(x.dtype).min` (or `float('-inf')` where no row is fully masked) instead of "
                       "a literal such as -1e9, so it follows the dtype")
            severity = Severity.WARNING if true_only else Severity.ERROR
            findings.append(Finding(self.id, severity.value, 0.9,
                                    f"{err.exc_type} in {err.phase} ({', '.join(r.precision for r in runs)})",
                                    [message] + [f"called from {f} `{f.code}`" for f in err.frames[-3:]]
                                    + ([f"raised inside library code at {library}"] if library else []),
                                    fix, source=loc, precisions=[r.precision for r in runs],
                                    explains_origin=not true_only))
        return findings
