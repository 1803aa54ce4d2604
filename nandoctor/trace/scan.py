"""The scan trace: plain, serialisable records of what the training runs did.

Everything the diagnosis rules and reporters know comes from here. Nothing in this module
touches torch; a Trace round-trips through JSON (`to_dict` / `Trace.from_dict`), so rules can
be tested on hand-made traces and a report can be re-rendered from a saved one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .compile import CompileReplay
from .experiments import ExperimentResult
from .location import SourceLocation
from .paths import ReplayPaths
from .plain import from_plain, to_plain
from .samples import BlamedSample, Intervention, SampleBlame  # noqa: F401 - RunTrace's field types
from .vocab import SCHEMA_VERSION, RunStatus
from .warnings import EarlyWarning

@dataclass
class TensorSummary:
    """min/max and domain facts of one op input (only kept for the failing op)."""
    name: str
    shape: list[int]
    dtype: str
    min: Optional[float] = None
    max: Optional[float] = None
    min_abs: Optional[float] = None
    nan: int = 0
    inf: int = 0
    zeros: int = 0
    negatives: int = 0
    value: Optional[float] = None      # for scalar (non-tensor) arguments
    masked: bool = False               # this input carried deliberate infinities (a mask), not an accident


@dataclass
class OpRef:
    op: str
    module: str
    source: Optional[SourceLocation] = None


@dataclass
class NonfiniteEvent:
    """Where the first non-finite value of a run was born."""
    precision: str
    step: int
    phase: str
    kind: str                          # "nan" | "inf"
    module: str = ""                   # innermost module active; "" for code outside modules
    op: Optional[str] = None           # aten op, e.g. "aten.log.default"
    source: Optional[SourceLocation] = None        # innermost frame outside torch/nandoctor
    user_source: Optional[SourceLocation] = None   # innermost frame in the user's own files
    forward_op: Optional[str] = None   # backward: the forward function that created the grad node
    inputs: list[TensorSummary] = field(default_factory=list)
    output: Optional[TensorSummary] = None
    producer: Optional[OpRef] = None   # the op that produced the failing op's first input
    masked_input: bool = False         # an input carried deliberate infinities (attention masks)
    tensor: Optional[str] = None       # data: which batch tensor ("inputs", "targets['y']")
    count: Optional[int] = None        # data/init: number of non-finite elements
    parameter: Optional[str] = None    # init/optimizer: which parameter
    state: Optional[str] = None        # optimizer: which state tensor ("exp_avg_sq")
    reproduced: Optional[bool] = None  # None: not replayed; False: the replay stayed finite
    surfaced_in: str = ""              # where the runner first saw it: loss, gradients, parameters, batch,
    #                                    or "checkpoint" (init phase: the values came from scan --checkpoint)
    detail: str = ""
    # The public torch call the user's line made when the origin aten op ran inside it (a
    # decomposition or a fused op): "torch.logdet", "torch.nn.functional.ctc_loss".
    call: Optional[str] = None
    # A NaN/Inf that reached this op as a Python number (`.item()`, `float(t)`, `alpha=`) was made
    # by this op: the 0-dim computation the user converted.
    scalar_source: Optional[OpRef] = None
    # Where the deliberate infinity that this op turned into NaN / an unmasked Inf was set
    # (masked_fill, index_put_ / indexed assignment, torch.where(mask, x, -inf), torch.full).
    mask_source: Optional[OpRef] = None
    # Replays of the failing step: None when not replayed; otherwise whether the failure came
    # back without tracing and with tracing. `reproduced` is False only when both stayed finite.
    replay_untraced: Optional[bool] = None
    replay_traced: Optional[bool] = None
    # The failing values came from a loaded checkpoint (scan --checkpoint), not from build_model().
    from_checkpoint: bool = False
    # Forward/loss origins: the first op that took these non-finite values in and gave only
    # finite values out (torch.where picking the other branch, masked_fill, a loss that selects
    # other classes). Set when the forward value never used the non-finite elements.
    dropped_by: Optional[OpRef] = None
    # The values were non-finite before the step used them, coming from outside every traced op:
    # "data" (a batch, targets or a constant the loop passed in) or "state" (a parameter or
    # buffer already holding them). None when the op itself made them.
    entered_from: Optional[str] = None
    # No line of the user's was on the stack (nandoctor called an installed package's model, which
    # computed its own loss), and the op made the non-finite values from finite inputs, one of them
    # a batch tensor: `user_source` is then the line that made that tensor, named here
    # ("inputs['labels']"), not a line the op ran in. None when `user_source` is a stack frame.
    user_source_batch: Optional[str] = None


@dataclass
class UserError:
    """An exception raised by the user's code, captured instead of crashing."""
    phase: str
    exc_type: str
    message: str
    source: Optional[SourceLocation] = None
    user_source: Optional[SourceLocation] = None
    frames: list[SourceLocation] = field(default_factory=list)
    # An ErrorCategory value: which kind of stop this was. Rules read this, never `message`.
    category: str = "user-code"


@dataclass
class BatchTensorStats:
    name: str
    dtype: str
    shape: list[int]
    numel: int
    nan: int = 0
    inf: int = 0
    max_abs: Optional[float] = None
    min: Optional[float] = None
    max: Optional[float] = None
    source: Optional[SourceLocation] = None     # the line in get_batch that made it (first step only)


@dataclass
class LabelCheck:
    tensor: str
    num_classes: int
    min: int
    max: int
    out_of_range: int
    ignored: int = 0                    # targets equal to ignore_index
    total: int = 0
    ignore_index: Optional[int] = -100


@dataclass
class StepRecord:
    step: int
    loss: Optional[float] = None
    grad_norm: Optional[float] = None
    lr: Optional[float] = None
    loss_scale: Optional[float] = None
    skipped: bool = False                       # GradScaler (or static scaling) skipped the update
    nonfinite_grads: list[str] = field(default_factory=list)    # parameter names
    batch: list[BatchTensorStats] = field(default_factory=list)
    labels: Optional[LabelCheck] = None
    # The watch's history steps (RunTrace.history) carry these whole-model numbers too: the
    # parameters' total L2 norm after the step and |update| / |weights| of the step.
    param_norm: Optional[float] = None
    update_ratio: Optional[float] = None


# Per-step series for one module. Index i of every list is step start_step + i. act_nan /
# act_inf / grad_nan / grad_inf are 0 or 1: whether that step's tensor held NaN / Inf.
LAYER_FIELDS = (
    "act_max_abs", "act_norm", "act_nan", "act_inf", "act_zero_frac",
    "grad_max_abs", "grad_norm", "grad_nan", "grad_inf", "grad_zero_frac",
    "param_norm", "param_grad_norm", "param_grad_zero_frac", "update_ratio",
)
PARAM_FIELDS = ("norm", "grad_norm", "grad_zero_frac", "grad_nonfinite", "update_ratio")


@dataclass
class LayerSeries:
    module: str
    type: str
    index: int                                  # position in named_modules(): depth order
    source: Optional[SourceLocation] = None     # where its parameters were created (constructor line)
    series: dict[str, list[Optional[float]]] = field(default_factory=dict)


@dataclass
class ParamSeries:
    name: str
    module: str
    shape: list[int]
    dtype: str
    numel: int = 0
    init_max_abs: Optional[float] = None       # before the first step
    init_norm: Optional[float] = None
    init_nonfinite: int = 0
    init_source: Optional[SourceLocation] = None   # the user line that last wrote it in build_model()
    series: dict[str, list[Optional[float]]] = field(default_factory=dict)


UNFINISHED_REASONS = ("script-ended", "script-exited", "script-raised", "interrupted", "trace-limit")


@dataclass
class UnfinishedStep:
    """A traced step (a script bundle's replay, or `nandoctor run`'s re-run) that never reached its
    end (its optimizer step, its closure's return, the end of its backward pass): what was traced
    until then was diagnosed."""
    reason: str          # one of UNFINISHED_REASONS
    detail: str = ""     # the exception, the exit code, the bound that was hit
    ops: int = 0         # ops traced before it stopped
    seconds: float = 0.0


@dataclass
class RunTrace:
    precision: str
    status: str = RunStatus.OK.value
    steps_requested: int = 0
    start_step: int = 0
    steps: list[StepRecord] = field(default_factory=list)
    layers: list[LayerSeries] = field(default_factory=list)
    params: list[ParamSeries] = field(default_factory=list)
    first_nonfinite: Optional[NonfiniteEvent] = None
    error: Optional[UserError] = None
    optimizer: dict[str, Any] = field(default_factory=dict)   # name, lr, eps, ... as used
    param_dtype: str = "float32"
    seconds: float = 0.0
    note: str = ""
    # Why the run stopped early, as an ErrorCategory value (time-budget, step-interrupted,
    # unsupported, user-interrupt); None when it ran every step or stopped at a non-finite value.
    stopped_by: Optional[str] = None
    stopped_at_step: Optional[int] = None
    # Steps before `start_step`, as a watched run saw them (a crash bundle's history window, or
    # `nandoctor run`'s own): loss, grad_norm, lr, loss_scale, skipped, param_norm, update_ratio.
    # Oldest first. Rules read it as the run's past; `steps` stay the steps this run executed.
    history: list[StepRecord] = field(default_factory=list)
    # A compiled run whose failing step stayed finite in eager: the step replayed down
    # torch.compile's ladder (trace/compile.py); None when not compiled or not replayed.
    compile_replay: Optional[CompileReplay] = None
    # A replay of a crash bundle: the execution paths (attention kernels, fast paths, optimizer
    # implementation, autocast, device) the recorded run and the replay took, and where they
    # differ (trace/paths.py); None for a scan, or a replay that did not compare them.
    replay_paths: Optional[ReplayPaths] = None
    # The traced step did not end normally (see UnfinishedStep); None when it did or none was traced.
    unfinished_step: Optional[UnfinishedStep] = None
    # A watched run's policies (skip, rollback) and the samples its fired steps were blamed on.
    interventions: list[Intervention] = field(default_factory=list)
    sample_blame: list[SampleBlame] = field(default_factory=list)
    # What the watch warned of before (or without) a NaN: loss/gradient spikes and the sampled
    # early warnings (attention logits, output logits, Adam updates, activation outliers).
    early_warnings: list[EarlyWarning] = field(default_factory=list)

    @property
    def steps_run(self) -> int:
        return len(self.steps)

    def layer(self, module: str) -> Optional[LayerSeries]:
        return next((layer for layer in self.layers if layer.module == module), None)


@dataclass
class ModelInfo:
    cls: str = ""
    modules: int = 0
    parameters: int = 0
    trainable: int = 0
    module_types: dict[str, int] = field(default_factory=dict)


@dataclass
class LoopFacts:
    """What `nandoctor run` saw of the user's own training loop: the lines a fix can name (each
    the first place the loop did it), and the settings the loop chose itself."""
    model_call: Optional[SourceLocation] = None        # the model's training forward
    backward: Optional[SourceLocation] = None          # `loss.backward()` (or scaler.scale(loss).backward())
    optimizer_step: Optional[SourceLocation] = None    # `optimizer.step()` / `scaler.step(optimizer)`
    optimizer_built: Optional[SourceLocation] = None   # the optimizer's constructor call (its lr=, eps=)
    clip_norm: Optional[float] = None                  # max_norm of clip_grad_norm_ (None: the loop never clips)
    clip_site: Optional[SourceLocation] = None
    grad_scaler: bool = False                          # an enabled GradScaler drives the optimizer
    hand_written_update: bool = False                  # no torch optimizer: the loop updates weights itself
    update_site: Optional[SourceLocation] = None       # that update's line (`p.data.add_(p.grad, alpha=-lr)`)
    argv: list[str] = field(default_factory=list)      # the script's command line (a setting may be a flag)
    # The earliest step a confirming experiment can re-train from (a rolling snapshot); None: none kept.
    rewind_from: Optional[int] = None


@dataclass
class Trace:
    model_file: str
    config: dict[str, Any]
    device: str
    torch_version: str
    tool_version: str
    model: ModelInfo = field(default_factory=ModelInfo)
    runs: list[RunTrace] = field(default_factory=list)
    experiments: list[ExperimentResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    experiments_seconds: float = 0.0
    checkpoint: Optional[str] = None
    # Where the model file defines its functions; build_optimizer points at its `lr=` line.
    functions: dict[str, SourceLocation] = field(default_factory=dict)
    # Runs nandoctor added for comparison, not requested and never part of the verdict: e.g. a
    # float32 run of the same steps when only 16-true was requested (fp16-underflow needs it).
    reference_runs: list[RunTrace] = field(default_factory=list)
    # `nandoctor run`: the user's own loop (None for a scan of a model file, or a replay).
    loop: Optional[LoopFacts] = None
    # The scan's torch CPU threads and why (config key threads): {threads, cores, load, reason}.
    threads: Optional[dict[str, Any]] = None
    # For a replay, how the crash bundle's run was built: "plain" (the user's own loop),
    # "lightning" or "huggingface" (a trainer's callback wrote it: the settings the user changes
    # are that trainer's, e.g. TrainingArguments(adam_epsilon=...)). None for a scan (and for
    # `nandoctor run`, whose loop is `loop`).
    framework: Optional[str] = None
    schema_version: int = SCHEMA_VERSION

    def run(self, precision: str) -> Optional[RunTrace]:
        return next((run for run in self.runs if run.precision == precision), None)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trace":
        return from_plain(cls, data)
