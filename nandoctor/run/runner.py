"""Drive the training runs: one per precision, recorded cheaply; replay the failing step."""
from __future__ import annotations

import contextlib
import copy
import math
import signal
import sys
import threading
import warnings
import time
from typing import Any, Callable, Optional

import torch

from ..errors import InputError
from ..load.model_file import ModelFile
from ..trace.vocab import Precision
from .precision import spec_of
from ..trace import (ErrorCategory, LAYER_FIELDS, PARAM_FIELDS, LayerSeries, ModelInfo, NonfiniteEvent, ParamSeries, Phase, RunStatus,
                     RunTrace, StepRecord)
from . import stats
from .recorder import Recorder, StepStats
from .frames import construction_site
from .heap import frozen_heap
from .origin import OriginTracer
from .value_birth import first_nonfinite_line
from .session import StepResult, TrainingSession
from .user_code import ScanInterrupted, UserCodeFailed

Progress = Callable[[str, int], None]   # (precision, steps done so far) after each step
FAILURE_PHASE = {"batch": Phase.DATA, "loss": Phase.FORWARD, "gradients": Phase.BACKWARD,
                 "parameters": Phase.OPTIMIZER}


class ScanTimeout(BaseException):
    """Raised by the watchdog inside whatever is running when --max-seconds ends. A
    BaseException, so a user's `except Exception` cannot swallow it."""


@contextlib.contextmanager
def watchdog(seconds: Optional[float]):
    """Interrupt a step that hangs (POSIX, main thread): a SIGALRM timer raises ScanTimeout.
    Elsewhere the budget is still checked between steps."""
    usable = seconds is not None and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise ScanTimeout()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Deadline:
    def __init__(self, seconds: Optional[float]):
        self.end = None if seconds is None else time.monotonic() + seconds

    @property
    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end

    def left(self) -> float:
        return math.inf if self.end is None else max(0.0, self.end - time.monotonic())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device '{name}' was requested but this machine has no usable CUDA device "
                         f"(torch {torch.__version__}); use --device cpu or --device auto.")
    return torch.device(name)


def unsupported_reason(precision: Precision, device: torch.device) -> Optional[str]:
    if device.type == "cuda" and spec_of(precision).compute_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(device)} has no bfloat16 support"
    return None


# Messages of torch backends that cannot run an op in a dtype on this device: the precision is
# unsupported here, which is a fact about the device, not a bug in the user's model.
_UNSUPPORTED_PATTERNS = ("not implemented for 'Half'", "not implemented for 'BFloat16'",
                         "could not create a primitive descriptor", "Unsupported dtype", "does not support bfloat16",
                         "does not support half", "not supported for Half", "not supported for BFloat16")


def _backend_unsupported(run: RunTrace, error) -> bool:
    if run.precision == Precision.FP32.value or error.phase == Phase.INIT.value:
        return False
    return any(p.lower() in error.message.lower() for p in _UNSUPPORTED_PATTERNS)


def run_precision(model_file: ModelFile, config: dict[str, Any], precision: Precision, device: torch.device,
                  deadline: Deadline, start_step: int = 0, initial_state: Optional[Callable] = None,
                  progress: Optional[Progress] = None, model_info: Optional[ModelInfo] = None,
                  replay: bool = True) -> RunTrace:
    """Run `config['steps']` recorded training steps; on the first failing step, locate its origin
    (`replay=False`: a reference run, which only records where the failure surfaced)."""
    run = RunTrace(precision=precision.value, steps_requested=config["steps"], start_step=start_step)
    began = time.perf_counter()
    reason = unsupported_reason(precision, device)
    if reason:
        run.status, run.note = RunStatus.UNSUPPORTED.value, reason
        return run
    try:
        session = TrainingSession(model_file, config, precision, device, initial_state=initial_state)
    except UserCodeFailed as failed:
        run.status, run.error = RunStatus.ERROR.value, failed.error
        return run
    if model_info is not None and not model_info.cls:
        describe_model(session.model, model_info)
    run.optimizer = session.optimizer_facts()
    run.param_dtype = str(session.params[0].dtype).replace("torch.", "")
    run.params = _init_params(session)
    broken = [p for p in run.params if p.init_nonfinite]
    if broken:
        worst = broken[0]
        run.status = RunStatus.NONFINITE.value
        run.first_nonfinite = NonfiniteEvent(
            precision=precision.value, step=start_step, phase=Phase.INIT.value,
            kind="nan" if worst.init_max_abs is None or math.isnan(worst.init_max_abs) else "inf", module=worst.module,
            parameter=worst.name, count=worst.init_nonfinite, reproduced=True,
            surfaced_in="checkpoint" if initial_state is not None else "parameters",
            detail=", ".join(f"{p.name}: {p.init_nonfinite} of {p.numel} non-finite" for p in broken[:5]))
        _fill_series(run, session, [])
        run.seconds = time.perf_counter() - began
        return run

    # The recorded run trains the compiled model when there is one (config `compile`, or a
    # build_model() that compiles); the replays that locate the origin run eagerly.
    session.compile_forward()
    recorder = Recorder(session.model).attach()
    collected: list[StepStats] = []
    # The steps make only short-lived objects: collections during them need not walk the rest.
    with frozen_heap():
        try:
            for step in range(start_step, start_step + config["steps"]):
                if deadline.expired:
                    run.status, run.stopped_by = RunStatus.TIMEOUT.value, ErrorCategory.TIME_BUDGET.value
                    run.note = f"--max-seconds ran out after {len(run.steps)} of {config['steps']} steps"
                    break
                try:
                    result = session.run_step(step, recorder)
                except ScanTimeout:
                    run.status, run.stopped_by = RunStatus.TIMEOUT.value, ErrorCategory.STEP_INTERRUPTED.value
                    run.stopped_at_step = step
                    run.note = (f"stopped inside step {step}: the step did not return before --max-seconds ran out "
                                f"({len(run.steps)} of {config['steps']} steps done); a step that hangs is a bug to look at")
                    break
                except ScanInterrupted:      # Ctrl-C: keep the steps that ran; api.scan reports and exits 130
                    run.status, run.stopped_by = RunStatus.INTERRUPTED.value, ErrorCategory.USER_INTERRUPT.value
                    run.stopped_at_step = step
                    run.note = f"interrupted (Ctrl-C) in step {step}; {len(run.steps)} of {config['steps']} steps ran"
                    break
                except UserCodeFailed as failed:
                    if _backend_unsupported(run, failed.error):
                        run.status, run.stopped_by = RunStatus.UNSUPPORTED.value, ErrorCategory.UNSUPPORTED.value
                        failed.error.category = ErrorCategory.UNSUPPORTED.value
                        run.note = f"torch on {device.type} cannot run this model in {precision.value}: {failed.error.message}"
                    else:
                        run.status, run.error = RunStatus.ERROR.value, failed.error
                    break
                run.steps.append(result.record)
                if result.stats is not None:
                    collected.append(result.stats)
                if progress:
                    progress(precision.value, len(run.steps))
                if result.error is not None:
                    run.status, run.error = RunStatus.ERROR.value, result.error
                    break
                if result.failure is not None:
                    run.status = RunStatus.NONFINITE.value
                    recorder.detach()
                    run.first_nonfinite = (locate_origin(model_file, config, precision, device, step, start_step,
                                                         result, initial_state, deadline) if replay
                                           else unreplayed_event(precision, step, result))
                    break
        finally:
            recorder.detach()
    _fill_series(run, session, collected)
    run.seconds = time.perf_counter() - began
    return run


# When the recorded run stopped on parameters that are finite but so large that their L2 norm
# overflows (the recorder's test of "non-finite"), the first truly non-finite value is born some
# steps later: the replay runs on (untraced, from a snapshot per step) until a value really is
# non-finite, until the end of the requested run, and at least this many steps past the failing
# one, within the time budget; only that step is traced.
MIN_SEARCH_STEPS = 3


def unreplayed_event(precision: Precision, step: int, seen: StepResult) -> NonfiniteEvent:
    """What the recorded step itself knows of a failure: where it surfaced, not where it began."""
    return seen.event or NonfiniteEvent(
        precision=precision.value, step=step, phase=FAILURE_PHASE[seen.failure or "loss"].value,
        kind="nan", surfaced_in=seen.failure or "")


def locate_origin(model_file: ModelFile, config: dict[str, Any], precision: Precision, device: torch.device,
                  step: int, start_step: int, seen: StepResult, initial_state: Optional[Callable] = None,
                  deadline: Optional[Deadline] = None) -> NonfiniteEvent:
    """Re-run deterministically up to `step` (nothing recorded), then replay that step twice from
    the same state: traced op by op (the origin) and untraced (is tracing changing the numbers?).

    Re-running keeps the normal path free of snapshots; every step re-seeds from (seed, step),
    so the replayed step sees the same weights, optimizer state, batch and dropout masks. The
    failure counts as reproduced when either replay fails the way the recorded run did; only
    when both stay finite is the event marked `reproduced=False`.
    """
    fallback = unreplayed_event(precision, step, seen)
    try:
        session = TrainingSession(model_file, config, precision, device, initial_state=initial_state)
        for earlier in range(start_step, step):
            if session.run_step(earlier).failure:
                fallback.reproduced = False
                fallback.detail = f"the replay failed earlier, at step {earlier}: the run is not deterministic"
                return fallback
        before = _snapshot(session)
        lr_bad = any(not math.isfinite(float(group["lr"])) or float(group["lr"]) < 0 for group in session.optimizer.param_groups)
        last_step = max(start_step + int(config.get("steps") or 0) - 1, step + MIN_SEARCH_STEPS)
        traced_step, result, tracer = _traced_replay(session, precision, step, last_step, deadline or Deadline(None))
        if traced_step == step:
            _adopt_batch_sources(seen.record, result.record)
        traced = _reproduces(session, result, seen) or traced_step != step
        untraced = _untraced_replay(session, before, step, seen)
    except UserCodeFailed:
        fallback.reproduced = False
        fallback.detail = "the replay raised in user code where the recorded run did not"
        return fallback
    fallback.replay_traced, fallback.replay_untraced = traced, untraced
    if not traced and untraced is False:
        fallback.reproduced = False
        fallback.detail = (f"step {step} stayed finite when replayed from the same state, with and without "
                           "tracing: a transient failure (non-deterministic kernels, data loading or hardware)")
        return fallback
    if not traced and untraced is None:
        # One finite replay is not enough to call the failure transient.
        fallback.reproduced = None
        fallback.detail = (f"step {step} stayed finite when replayed with tracing; the untraced replay could "
                           "not be run, so whether the failure is transient is unknown")
        return fallback
    root = tracer.origin(result.surfaces) if result.failure is not None else None
    if root is None:
        fallback.reproduced = True
        if traced and result.failure is None:
            fallback.detail = (f"at step {step} the parameters grew so large that their L2 norm overflowed "
                               f"{str(session.params[0].dtype).replace('torch.', '')}, though every value stayed finite; "
                               f"no non-finite value appeared by step {last_step} (the end of the search)")
        elif not traced:
            fallback.detail = (f"step {step} failed again only without tracing: the traced replay stayed finite, "
                               "so no op could be named")
        else:
            fallback.detail = "the replay reproduced the failure but no single op produced the first non-finite value"
        return fallback
    event = tracer.to_event(root, result.failure, session.optimizer)
    event.replay_traced, event.replay_untraced = traced, untraced
    if traced_step != step:
        event.detail = (f"at step {step} the parameters grew so large that their L2 norm overflowed (values still "
                        f"finite), which the recorded run counts as non-finite; the first non-finite value was born "
                        f"at step {traced_step}")
    if seen.event is not None:      # data: keep which tensor and how many elements
        event.tensor, event.count, event.detail = seen.event.tensor, seen.event.count, seen.event.detail
        event.phase = Phase.DATA.value
    if event.phase == Phase.OPTIMIZER.value and event.user_source is None:
        event.user_source = _optimizer_site(model_file, session, lr_bad, step - start_step)
    return event


def _adopt_batch_sources(recorded: StepRecord, traced: StepRecord) -> None:
    """The traced replay notes where this step's batch tensors were made; the recorded step
    (which the recorder only notes for the run's first step) keeps those lines."""
    made = {b.name: b.source for b in traced.batch if b.source is not None}
    for b in recorded.batch:
        b.source = made.get(b.name, b.source)


def _optimizer_site(model_file: ModelFile, session: TrainingSession, lr_bad: bool, steps_before: int):
    """For an origin inside torch.optim: when the learning rate of the failing step was
    non-finite, the user's line where the schedule made that value (else the line that built
    the scheduler); otherwise the line that built the optimizer."""
    if lr_bad and model_file.build_scheduler is not None and session.scheduler is not None:
        return (_schedule_birth(model_file, session.optimizer, steps_before)
                or construction_site(model_file.build_scheduler, type(session.scheduler).__name__))
    if model_file.build_optimizer is not None:
        return construction_site(model_file.build_optimizer, type(session.optimizer).__name__)
    return None


def _schedule_birth(model_file: ModelFile, optimizer: torch.optim.Optimizer, steps_before: int):
    """Build the user's scheduler once more, on a stand-in optimizer with the same class and
    hyperparameters (one one-element parameter per group), and step it as far as the failing
    step, under a line tracer: the first line of the user's schedule code that made a
    non-finite number (`factors = sqrt(w) / sqrt(arange(n))`, a lambda returning inf). None
    when the stand-in cannot be built or no such line is found."""
    groups = []
    for group in optimizer.param_groups:
        hyper = {k: v for k, v in group.items() if k not in ("params", "initial_lr")}
        hyper["lr"] = group.get("initial_lr", group["lr"])
        groups.append({"params": [torch.zeros(1, requires_grad=True)], **hyper})
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            try:
                stand_in = type(optimizer)(groups)      # every hyperparameter is in the groups
            except TypeError:                           # a constructor with a required argument
                stand_in = torch.optim.SGD(groups)
            scheduler, site = first_nonfinite_line(model_file.build_scheduler, stand_in)
            for _ in range(steps_before):
                if site is not None or not all(math.isfinite(float(g["lr"])) for g in stand_in.param_groups):
                    break
                _, site = first_nonfinite_line(scheduler.step)
    except Exception:        # the user's schedule code; any failure only means no line to name
        return None
    return site


def _traced_replay(session: TrainingSession, precision: Precision, step: int, last_step: int,
                   deadline: Deadline) -> tuple[int, StepResult, OriginTracer]:
    """Trace `step`; when it only reproduces as oversized-but-finite parameters, run on untraced
    (a snapshot before each step) to the first step where a value really becomes non-finite, and
    trace that step again from its snapshot. Gives up at `last_step` or when the budget ends."""
    tracer = OriginTracer(session.model, precision.value, step)
    with tracer:
        result = session.run_step(step, tracer)
    if not _oversized_only(session, result):
        return step, result, tracer
    first = (step, result, tracer)
    for current in range(step + 1, last_step + 1):
        if deadline.expired:
            break
        before = _snapshot(session)
        probe: Optional[OriginTracer] = None
        try:
            if before is None:          # no snapshot: trace every step of the search
                probe = OriginTracer(session.model, precision.value, current)
                with probe:
                    result = session.run_step(current, probe)
            else:
                result = session.run_step(current)
        except UserCodeFailed:          # the oversized values broke the user's code: nothing to trace
            break
        if _oversized_only(session, result):
            continue
        if probe is None and before is not None and _restore(session, before):
            probe = OriginTracer(session.model, precision.value, current)
            with probe:
                result = session.run_step(current, probe)
        if probe is None:
            break
        return current, result, probe
    return first


def _oversized_only(session: TrainingSession, result: StepResult) -> bool:
    """The step's finiteness check judges parameters by their L2 norm (as the recorded run did):
    parameters whose norm overflows while every value is finite hold no origin yet."""
    if result.failure is not None:
        return result.failure == "parameters" and _params_finite_elementwise(session)
    return _params_overflow(session)


def _restore(session: TrainingSession, before: dict[str, Any]) -> bool:
    try:
        session.model.load_state_dict(before["model"])
        session.optimizer.load_state_dict(before["optimizer"])
        for key in ("scheduler", "scaler"):
            if key in before:
                getattr(session, key).load_state_dict(before[key])
    except Exception:  # noqa: BLE001 - a user object that cannot be restored
        return False
    return True


def _params_finite_elementwise(session: TrainingSession) -> bool:
    return all(bool(torch.isfinite(p.detach()).all()) for p in session.params)


def _reproduces(session: TrainingSession, result: StepResult, seen: StepResult) -> bool:
    """Did a replayed step fail as the recorded one did? The recorder calls parameters whose L2
    norm overflows non-finite; a step without the recorder checks max |x|, so test that too."""
    if result.failure is not None:
        return True
    return seen.failure == "parameters" and _params_overflow(session)


def _params_overflow(session: TrainingSession) -> bool:
    params = [p.detach() for p in session.params]
    return bool(params) and not bool(torch.isfinite(stats.foreach_norms(params, 2.0)).all())


def _snapshot(session: TrainingSession) -> Optional[dict[str, Any]]:
    """Copies of the state a step changes (model, optimizer, scheduler, scaler), to replay the
    same step a second time; None when some part cannot be saved."""
    try:
        out = {"model": copy.deepcopy(session.model.state_dict()),
               "optimizer": copy.deepcopy(session.optimizer.state_dict())}
        for key in ("scheduler", "scaler"):
            part = getattr(session, key)
            if part is not None and hasattr(part, "state_dict"):
                out[key] = copy.deepcopy(part.state_dict())
        return out
    except Exception:  # noqa: BLE001 - a user object that cannot be copied: no second replay
        return None


def _untraced_replay(session: TrainingSession, before: Optional[dict[str, Any]], step: int,
                     seen: StepResult) -> Optional[bool]:
    """Restore the state before `step` and run it again without tracing; None when the state
    could not be restored."""
    if before is None or not _restore(session, before):
        return None
    try:
        return _reproduces(session, session.run_step(step), seen)
    except UserCodeFailed:       # raised instead of failing: neither a reproduction nor a finite step
        return None


def describe_model(model: torch.nn.Module, info: ModelInfo) -> None:
    """Facts of the model's structure, from the model the first run built (never a separate build)."""
    types: dict[str, int] = {}
    for m in model.modules():
        types[type(m).__name__] = types.get(type(m).__name__, 0) + 1
    params = list(model.parameters())
    info.cls, info.modules, info.module_types = type(model).__name__, sum(types.values()), types
    info.parameters = sum(p.numel() for p in params)
    info.trainable = sum(p.numel() for p in params if p.requires_grad)


def _init_params(session: TrainingSession) -> list[ParamSeries]:
    names = [n for n, p in session.model.named_parameters() if p.requires_grad]
    tensors = [p.detach() for p in session.params]
    values = torch.stack([stats.foreach_max_abs(tensors).to(torch.float64),
                          stats.foreach_norms(tensors, 2.0).to(torch.float64)]).tolist()
    # Non-finite elements are counted only in the tensors whose max |x| says they hold some (no
    # concatenated copy of every weight: that would be three times the model at its start).
    values.append([float(int((~torch.isfinite(t)).sum())) if not math.isfinite(m) else 0.0
                   for t, m in zip(tensors, values[0])])
    out = []
    for i, (name, t) in enumerate(zip(names, tensors)):
        out.append(ParamSeries(name=name, module=name.rpartition(".")[0], shape=list(t.shape),
                               dtype=str(t.dtype).replace("torch.", ""), numel=t.numel(),
                               init_max_abs=values[0][i], init_norm=values[1][i], init_nonfinite=int(values[2][i]),
                               init_source=session.init_sites.get(name),
                               series={f: [] for f in PARAM_FIELDS}))
    return out


def _ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    if num is None or den is None:
        return None
    if den == 0:
        return math.inf if num else 0.0
    return num / den


_ROW_KEYS = ("max_abs", "norm", "nan", "inf", "zero_frac")


def _combine(values: list[Optional[float]]) -> Optional[float]:
    """The L2 norm of a module's parameters from theirs (None where none was measured)."""
    present = [v for v in values if v is not None]
    return math.sqrt(sum(v * v for v in present)) if present else None


def _row_values(row: list[float], scale: float) -> tuple:
    """stats.row_facts of a recorded row (ROW plus its element count), in _ROW_KEYS order."""
    facts = stats.row_facts(row, row[-1], scale)
    return facts["max_abs"], facts["norm"], facts["nan"], facts["inf"], facts["zero_frac"]


def _fill_series(run: RunTrace, session: TrainingSession, collected: list[StepStats]) -> None:
    """Turn per-step host numbers into per-module and per-parameter series. Step by step, each
    step's numbers dropped once they are in the series: the two never both hold every step
    (a few MiB each on a 1000-module model)."""
    params = run.params
    own: dict[str, list[int]] = {}
    for i, p in enumerate(params):
        own.setdefault(p.module, []).append(i)
    # Modules x steps x fields values: the loops below run ~10^5 times on a 1000-module model,
    # so each series list is bound once and a row's facts come as a tuple, not a dict.
    layers = []
    for index, (name, module) in enumerate(session.model.named_modules()):
        mine = own.get(name, [])
        layer = LayerSeries(module=name, type=type(module).__name__, index=index,
                            source=params[mine[0]].init_source if mine else None,
                            series={f: [] for f in LAYER_FIELDS})
        series = layer.series
        layers.append((index, mine, sum(params[i].numel for i in mine), series,
                       [series[f"act_{key}"] for key in _ROW_KEYS], [series[f"grad_{key}"] for key in _ROW_KEYS]))
        run.layers.append(layer)
    empty = (None,) * 5
    for k, s in enumerate(collected):
        collected[k] = None  # type: ignore[call-overload]   # dropped once in the series
        for i, p in enumerate(params):
            grad_norm = s.param_grad_norm[i] if i < len(s.param_grad_norm) else None
            zeros = s.param_grad_zeros[i] if i < len(s.param_grad_zeros) else None
            p.series["norm"].append(s.param_norm[i] if i < len(s.param_norm) else None)
            p.series["grad_norm"].append(grad_norm)
            p.series["grad_zero_frac"].append(None if zeros is None else zeros / max(p.numel, 1))
            grad_max = s.param_grad_max[i] if i < len(s.param_grad_max) else None
            p.series["grad_nonfinite"].append(None if grad_max is None else float(not math.isfinite(grad_max)))
            p.series["update_ratio"].append(_ratio(s.update_norm[i] if i < len(s.update_norm) else None,
                                                   s.param_norm_before[i] if i < len(s.param_norm_before) else None))
        for index, mine, numel, series, act_lists, grad_lists in layers:
            act = s.act.get(index)
            grad = s.grad.get(index)
            for values, target in ((_row_values(act, 1.0) if act else empty, act_lists),
                                   (_row_values(grad, s.grad_scale) if grad else empty, grad_lists)):
                for value, out in zip(values, target):
                    out.append(value)
            if mine:
                series["param_norm"].append(_combine([s.param_norm[i] for i in mine]))
                series["param_grad_norm"].append(_combine([s.param_grad_norm[i] for i in mine]))
                zeros = [s.param_grad_zeros[i] for i in mine if s.param_grad_zeros[i] is not None]
                series["param_grad_zero_frac"].append(sum(zeros) / numel if zeros and numel else None)
                series["update_ratio"].append(_ratio(_combine([s.update_norm[i] for i in mine]),
                                                     _combine([s.param_norm_before[i] for i in mine])))
            else:
                for key in ("param_norm", "param_grad_norm", "param_grad_zero_frac", "update_ratio"):
                    series[key].append(None)

