"""Pure helpers the rules share: reading series, formatting numbers, naming places."""
from __future__ import annotations

import math
from typing import Iterable, Optional


from ..trace.vocab import DTYPE_MAX, DTYPE_SUBNORMAL, FP16_MAX
from .op_semantics import op_name
from ..trace import ExperimentResult, LayerSeries, NonfiniteEvent, RunTrace, SourceLocation, TensorSummary, Trace

# float16 precisions (the bf16 ones share float32's range).
SIXTEEN_BIT = ("16-mixed", "16-true")
BF16 = ("bf16-mixed", "bf16-true")
FP16_TINY = DTYPE_SUBNORMAL["float16"]      # below half of it a float16 value flushes to 0


def finite(values: Iterable[Optional[float]]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def failing_runs(trace: Trace) -> list[RunTrace]:
    return [r for r in trace.runs if r.first_nonfinite is not None]


def origin_events(trace: Trace) -> list[NonfiniteEvent]:
    """Origins the replay confirmed. An event that did not reproduce names no op or line to
    blame; the nonreproducible rule speaks for it."""
    return [r.first_nonfinite for r in failing_runs(trace)
            if r.first_nonfinite is not None and r.first_nonfinite.reproduced is not False]


def clean_runs(trace: Trace) -> list[RunTrace]:
    return [r for r in trace.runs if r.status == "ok"]


def op_short(op: Optional[str]) -> str:
    """aten.log.default -> log; aten._softmax.default -> softmax; torch.logdet -> logdet."""
    return op_name(op)


def user_call_site(trace: Trace) -> Optional[SourceLocation]:
    """The user's own line that hands a batch to library code: the model call of the script's
    loop (`nandoctor run`), else the model file's loss_fn or get_batch."""
    if trace.loop is not None and trace.loop.model_call is not None:
        return trace.loop.model_call
    return trace.functions.get("loss_fn") or trace.functions.get("get_batch")


def where(event: NonfiniteEvent) -> Optional[SourceLocation]:
    """The user's own line for this event: where a finding points and a fix applies. None when
    the op ran only in library code (a Hugging Face model's loss called by nandoctor or a trainer):
    `event.source` then names that library line, which is detail, never the place to fix."""
    if event.user_source_batch is not None:    # the line that made the batch, not where the op ran
        return user_line(event.source)
    return user_line(event.user_source) or user_line(event.source)


def user_line(loc: Optional[SourceLocation]) -> Optional[SourceLocation]:
    """`loc` when it is in the user's files; None for a frame of an installed package."""
    return loc if loc is not None and not loc.library else None


def library_frame(event: NonfiniteEvent) -> Optional[SourceLocation]:
    """The library line where the op ran, when it is not the user's own (the detail to show)."""
    return event.source if event.source is not None and event.source.library else None


def module_label(module: Optional[str], phase: Optional[str] = None) -> str:
    """A module path for prose; an op outside every module is placed by its phase."""
    if module:
        return f"`{module}`"
    return {"loss": "the loss computation (outside every module)", "data": "get_batch",
            "optimizer": "the optimizer step"}.get(phase or "", "the model's own forward (outside submodules)")


def leaf_param_layers(run: RunTrace) -> list[LayerSeries]:
    """Layers with their own parameters, in definition order (first = closest to the input)."""
    return [layer for layer in sorted(run.layers, key=lambda l: l.index)
            if any(v is not None for v in layer.series.get("param_grad_norm", []))]


def experiments_for(trace: Trace, experiment_id: str, precision: Optional[str] = None) -> list[ExperimentResult]:
    return [e for e in trace.experiments if e.id == experiment_id and (precision is None or e.precision == precision)]


def refuted(trace: Trace, experiment_id: str, precisions: Optional[Iterable[str]] = None) -> Optional[ExperimentResult]:
    """An experiment of this report that made the change `experiment_id` names (clipping, a larger
    eps, float32, bf16, a lower lr) and still went non-finite: a fix must not propose it again."""
    wanted = set(precisions) if precisions is not None else None
    return next((e for e in trace.experiments if e.id == experiment_id and e.outcome == "nonfinite"
                 and (wanted is None or e.precision in wanted)), None)


def failed_later(result: ExperimentResult, results: list[ExperimentResult]) -> Optional[ExperimentResult]:
    """A variant of the same experiment that stayed finite through every step `result` ran and
    went non-finite only after them (lr / 10 failing at step 330 beside lr / 100 finite for 40
    steps): then `result`'s finite run is too short to tell a fix from a delayed failure."""
    if result.outcome != "finite":
        return None
    return next((e for e in results if e is not result and e.id == result.id and e.precision == result.precision
                 and e.outcome == "nonfinite" and e.steps_run > result.steps_run), None)


def median(values: list[float]) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def precision_names(runs: Iterable[RunTrace]) -> list[str]:
    return [r.precision for r in runs]


# Ops whose domain edge gives NaN/Inf from finite inputs (forward or loss).
UNSTABLE_OPS = {"log", "log2", "log10", "log1p", "exp", "exp2", "expm1", "pow", "sqrt", "rsqrt", "div", "reciprocal",
                "acos", "asin", "atanh", "acosh", "std", "var", "std_mean", "var_mean", "tan", "sinh", "cosh", "erfinv",
                "digamma", "lgamma", "logit", "xlogy", "mul", "true_divide", "floor_divide", "fmod", "remainder",
                "atan2", "polygamma", "binary_cross_entropy", "sub", "add", "sum"}
REDUCTION_OPS = {"mean", "nll_loss_forward", "nll_loss2d_forward", "nll_loss", "div", "sum", "std", "var",
                 "native_batch_norm", "native_layer_norm", "group_norm", "native_group_norm", "cross_entropy_loss",
                 "binary_cross_entropy"}
SOFTMAX_OPS = {"softmax", "log_softmax", "safe_softmax"}
MATMUL_OPS = {"addmm", "mm", "bmm", "matmul", "linear", "convolution", "cudnn_convolution", "baddbmm", "addbmm",
              "mkldnn_convolution", "conv2d", "conv1d", "einsum", "scaled_dot_product_attention",
              "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention"}


IGNORE_INDEX = -100      # cross_entropy's and Hugging Face's default: a target that takes no part in the loss
NLL_OPS = {"nll_loss_forward", "nll_loss2d_forward", "nll_loss", "cross_entropy_loss"}


def ignored_labels(event: NonfiniteEvent, trace: Trace) -> Optional[tuple[str, int, int]]:
    """(tensor, ignored, total) when every class target of the failing step equals ignore_index
    (-100): from the step's label check, an integer batch tensor (`labels` of a Hugging Face
    batch) whose every element is -100, or an integer input of the failing op that is."""
    run = trace.run(event.precision)
    step = next((s for s in (run.steps if run else []) if s.step == event.step), None)
    if step is not None and step.labels is not None and step.labels.total and step.labels.ignored == step.labels.total:
        return step.labels.tensor, step.labels.ignored, step.labels.total
    batch = [b for b in (step.batch if step else []) if _is_integer(b.dtype) and b.numel
             and b.min == IGNORE_INDEX and b.max == IGNORE_INDEX]
    if batch:
        b = min(batch, key=lambda b: "label" not in b.name.lower())      # a tensor named labels first
        return b.name, b.numel, b.numel
    for t in event.inputs:
        if t.value is None and _is_integer(t.dtype) and t.min == IGNORE_INDEX and t.max == IGNORE_INDEX:
            return t.name, _numel(t.shape), _numel(t.shape)
    return None


def _zero_over_zero(event: NonfiniteEvent) -> bool:
    """Every input of the division is 0: a float 0 over a 0 (tensors wholly zero, scalars 0)."""
    tensors = [t for t in event.inputs if t.value is None]
    scalars = [t for t in event.inputs if t.value is not None]
    zeros = [t for t in tensors if t.zeros and (t.shape == [] or t.zeros == _numel(t.shape))]
    return len(zeros) + len([t for t in scalars if t.value == 0]) >= 2 and len(zeros) == len(tensors)


def is_empty_reduction(event: NonfiniteEvent, trace: Trace) -> bool:
    """A NaN born from 0/0: a mean over nothing, a loss whose every target is ignored."""
    if event.kind != "nan" or event.phase not in ("forward", "loss"):
        return False
    name = op_short(event.op)
    if name not in REDUCTION_OPS:
        return False
    if any(0 in t.shape for t in event.inputs if t.shape):
        return True
    if name.startswith("nll_loss") and any(t.dtype.startswith("int") and t.min == -100 and t.max == -100
                                           for t in event.inputs):
        return True   # every target is ignore_index
    run = trace.run(event.precision)
    step = next((s for s in (run.steps if run else []) if s.step == event.step), None)
    if step and step.labels and step.labels.total and step.labels.ignored == step.labels.total:
        return True
    if name == "div" and _zero_over_zero(event) and (
            ignored_labels(event, trace) is not None
            or (event.producer is not None and op_short(event.producer.op) in NLL_OPS)
            or (library_frame(event) is not None and where(event) is None
                and (event.producer is None or event.producer.source is None or event.producer.source.library))):
        # A summed loss over zero targets divided by their count: Hugging Face's
        # `loss / num_items_in_batch` when every label of the batch is -100 (0.0 / 0.0, both float).
        # A library's 0.0 / 0.0 with no line of the user's on the stack, its numerator made in the
        # library too, is the same reduction: a loss divides a sum by how many elements it counted.
        return True
    if name == "div":
        # A mean written by hand divides a sum of values by how many there were: a float 0
        # over an integer count of 0 (`x.sum() / mask.sum()`, `len(...)`) is a mean over
        # nothing. Two counts (a fraction) or two float statistics (an IoU, a ratio of sums)
        # at 0 / 0 are the indeterminate form of a ratio, the division's own edge.
        tensors = [t for t in event.inputs if t.value is None]
        counts = [t for t in event.inputs if t.value == 0 and t.dtype == "int"]      # `/ len(selected)`
        if len(tensors) == 1 and counts:
            tensors = tensors + [TensorSummary(name="count", shape=[], dtype="int64", min=0.0, max=0.0, zeros=1)]
        if len(tensors) < 2 or not all(t.zeros and (t.shape == [] or t.zeros == _numel(t.shape)) for t in tensors[:2]):
            return False
        numerator, count = tensors[:2]
        return _is_float(numerator.dtype) and _is_integer(count.dtype)
    return False


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat", "half", "double"))


def _is_integer(dtype: str) -> bool:
    return dtype.startswith(("int", "uint", "long", "short"))


def _numel(shape: list[int]) -> int:
    total = 1
    for d in shape:
        total *= d
    return total


def batch_site(trace: Trace, precision: str, prefixes: tuple[str, ...],
               step: Optional[int] = None) -> Optional[SourceLocation]:
    """The line in get_batch that made a batch tensor whose name starts with one of `prefixes`
    (`step`: that step's line first, when the replay of a failing step noted it)."""
    run = trace.run(precision)
    records = sorted(run.steps if run else [], key=lambda s: s.step != step)
    for step_record in records:
        for b in step_record.batch:
            if b.source is not None and any(b.name.startswith(p) or p in b.name for p in prefixes):
                return b.source
    return None


# ---- where a fix goes: a model file's functions (scan) or the user's own loop (run) ----------------

def _site(loc: Optional[SourceLocation]) -> str:
    return f"{loc} (`{loc.code}`)" if loc is not None and loc.code else str(loc) if loc is not None else ""


def clip_fix(trace: Trace) -> str:
    """How to add (or tighten) gradient clipping, in the user's own terms; never clipping when
    this report's clip-grad experiment clipped and still failed."""
    tried = refuted(trace, "clip-grad")
    if tried is not None:
        return (f"clipping does not fix this run ({tried.label}: still non-finite at step {tried.first_bad_step}): "
                "lower the learning rate or fix the layer that grows")
    loop = trace.loop
    if loop is not None:
        if loop.clip_norm and loop.clip_norm < 1e3:
            return f"the loop already clips at max_norm {loop.clip_norm:g} ({_site(loop.clip_site)}); lower the " \
                   "learning rate or add normalisation"
        if loop.clip_norm:
            return (f"the loop's clipping at max_norm {loop.clip_norm:g} ({_site(loop.clip_site)}) never acts: clip "
                    "at a norm the gradients really reach (0.25 to 1.0 is usual)")
        step = _site(loop.optimizer_step)
        return ("clip gradients: call `torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)` right before "
                f"{'the optimizer step at ' + step if step else '`optimizer.step()`'}"
                + (" (after `scaler.unscale_(optimizer)`)" if loop.grad_scaler else ""))
    if trace.config.get("grad_clip"):
        return f"gradient clipping at {trace.config['grad_clip']} is on; lower the learning rate or add normalisation"
    return ("clip gradients: set `grad_clip: 1.0` in the config (the training loop then calls "
            "`torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)` before `optimizer.step()`)")


def optimizer_site(trace: Trace) -> Optional[SourceLocation]:
    """Where the optimizer's hyperparameters are written: build_optimizer's line, or the
    constructor call in the user's script."""
    if trace.loop is not None:
        return trace.loop.optimizer_built or trace.loop.update_site
    return trace.functions.get("build_optimizer")


def data_place(trace: Trace) -> str:
    """Where the batch is made, for a fix: get_batch in a model file, else before the model call."""
    if trace.loop is not None:
        call = _site(trace.loop.model_call)
        return f"before the model sees it{' (' + call + ')' if call else ''}, in your dataset or collate function"
    return "in get_batch"


def command_line_flag(trace: Trace, words: tuple[str, ...], value: Optional[float]) -> Optional[str]:
    """The script's own command-line argument that set a value (`--learning_rate=10`, `--lr 20`,
    `--adam_epsilon 0`): a flag whose name holds one of `words` and whose value equals `value`."""
    argv = trace.loop.argv if trace.loop is not None else []
    if value is None or not argv:
        return None
    for i, word in enumerate(argv):
        if not word.startswith("-"):
            continue
        name, _, inline = word.partition("=")
        text = inline if inline else (argv[i + 1] if i + 1 < len(argv) else "")
        if not any(w in name.lower() for w in words):
            continue
        try:
            given = float(text)
        except ValueError:
            continue
        if given == value or (value and abs(given - value) <= 1e-9 * abs(value)):
            return f"{name}={text}" if inline else f"{name} {text}"
    return None


def compile_explains(run: Optional[RunTrace]) -> bool:
    """The run's failing step stayed finite in eager and a compiler stage made it non-finite again
    (compile-numerics owns it, not nonreproducible)."""
    replay = run.compile_replay if run is not None else None
    return replay is not None and replay.first_failing is not None
