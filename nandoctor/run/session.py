"""One precision's training state (model, optimizer, scaler) and one training step's phases.

The same `run_step` serves the recorded run, the replay of a failing step (with a tracer)
and the confirming experiments (with overrides), so all three execute exactly the same code.
"""
from __future__ import annotations

import contextlib
import math
import random
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..load.model_file import ModelFile
from ..precision import Precision
from ..trace import BatchTensorStats, LabelCheck, NonfiniteEvent, Phase, StepRecord, UserError
from . import stats
from .frames import register_boundary, traceback_locations
from .recorder import Recorder, StepStats
from .init_sites import record_init_sites, record_tensor_sites, site_for
from .replay import OriginTracer


class UserCodeFailed(Exception):
    """Internal signal: the user's code raised during `phase`; carries the captured UserError."""

    def __init__(self, error: UserError):
        super().__init__(error.message)
        self.error = error


@dataclass
class Overrides:
    """One change applied to a run (confirming experiments). Defaults change nothing."""
    lr_scale: float = 1.0
    grad_clip: Optional[float] = None
    eps: Optional[float] = None
    reinit: bool = False
    batch_fix: Optional[str] = None          # "sanitise": nan_to_num every batch; "skip": drop non-finite batches
    switch_dtype_at: Optional[tuple[int, torch.dtype]] = None  # run from this step on in this dtype


@dataclass
class StepResult:
    record: StepRecord
    stats: Optional[StepStats] = None
    failure: Optional[str] = None          # batch | loss | gradients | parameters
    event: Optional[NonfiniteEvent] = None
    error: Optional[UserError] = None
    surfaces: list = field(default_factory=list)   # tensors where the failure was seen (for the replay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % (2**32))


def step_seed(seed: int, step: int, salt: int) -> int:
    # Every step re-seeds from (seed, step): batches match across precisions and a replayed
    # step draws the same dropout masks, without snapshotting RNG state on the normal path.
    return (seed * 1_000_003 + step * 7919 + salt) % (2**63)


def call_user(phase: Phase, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (InputError, UserCodeFailed):
        raise
    except Exception as err:  # noqa: BLE001 - any exception from user code becomes a finding
        source, user, frames = traceback_locations(err.__traceback__)
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserCodeFailed(UserError(phase=phase.value, exc_type=type(err).__name__, message=message[:500],
                                       source=source, user_source=user, frames=frames[-8:])) from None


register_boundary(call_user)


class StaticScaler:
    """A fixed loss scale (config `loss_scale: <number>`): skips steps whose gradients overflow."""

    def __init__(self, scale: float):
        self.scale_value = scale
        self._found_inf = False

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_value

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.scale_value)
            self._found_inf = not bool(torch.isfinite(stats.foreach_norms(grads, math.inf)).all())

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self._found_inf:
            optimizer.step()

    def update(self) -> None:
        pass

    def get_scale(self) -> float:
        return self.scale_value

    @property
    def skipped_last(self) -> bool:
        return self._found_inf


def default_loss(outputs: Any, targets: Any) -> torch.Tensor:
    """Hugging Face `loss`, else cross-entropy for integer targets, MSE for floating targets."""
    hf_loss = outputs.get("loss") if isinstance(outputs, dict) else getattr(outputs, "loss", None)
    if isinstance(hf_loss, torch.Tensor):
        return hf_loss
    logits = _primary_output(outputs)
    if not isinstance(targets, torch.Tensor) or logits is None:
        raise InputError("the model file has no loss_fn(outputs, targets) and nandoctor cannot pick a default: "
                         "the default needs a tensor output (or a `loss` key/attribute) and tensor targets. "
                         "Define loss_fn in the model file.")
    if not targets.is_floating_point():
        if logits.dim() > 2 and targets.dim() == logits.dim() - 1 and logits.shape[:-1] == targets.shape:
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return F.cross_entropy(logits, targets)
    # In float32, as autocast would: a float16 cast of large targets would itself overflow.
    return F.mse_loss(logits.float(), targets.float())


def _primary_output(outputs: Any) -> Optional[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    return None


def build_optimizer(params: list[torch.nn.Parameter], spec: dict[str, Any]) -> torch.optim.Optimizer:
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    name = spec.get("name", "adamw")
    if "eps" not in kwargs and name != "sgd" and params and params[0].dtype == torch.float16:
        # eps "auto": the optimizers' default 1e-8 is 0 in float16 and divides 0/0 (see optimizer-eps).
        kwargs["eps"] = 1e-4
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    classes = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD,
               "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}
    cls = classes[spec.get("name", "adamw")]
    try:
        return cls(params, **kwargs)
    except TypeError as err:
        raise InputError(f"config key 'optimizer': {cls.__name__} does not accept these settings ({err}).") from None


class TrainingSession:
    """Model, optimizer and scaler for one precision, built the way the user's file says."""

    def __init__(self, model_file: ModelFile, config: dict[str, Any], precision: Precision, device: torch.device,
                 overrides: Optional[Overrides] = None, initial_state: Optional[Callable[["TrainingSession"], None]] = None):
        self.model_file = model_file
        self.config = config
        self.precision = precision
        self.spec = precision.spec
        self.device = device
        self.overrides = overrides or Overrides()
        self.seed = config["seed"]
        self.compute_dtype = self.spec.compute_dtype
        self.autocast = self.spec.autocast
        seed_everything(self.seed)
        model, sites = call_user(Phase.INIT, record_init_sites, model_file.build_model)
        if not isinstance(model, torch.nn.Module):
            raise InputError(f"model file {model_file.display}: build_model() must return a torch.nn.Module, "
                             f"got {type(model).__name__}.")
        if self.overrides.reinit:
            for module in model.modules():
                if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
                    module.reset_parameters()
        model.to(device)
        if self.spec.cast_model:
            model.to(self.compute_dtype)
        model.train()
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise InputError(f"model file {model_file.display}: the model from build_model() has no trainable "
                             "parameters, so there is no training step to examine.")
        if model_file.build_optimizer is not None:
            self.optimizer = call_user(Phase.INIT, model_file.build_optimizer, params)
            if not isinstance(self.optimizer, torch.optim.Optimizer):
                raise InputError(f"model file {model_file.display}: build_optimizer(params) must return a "
                                 f"torch.optim.Optimizer, got {type(self.optimizer).__name__}.")
        else:
            self.optimizer = build_optimizer(params, config["optimizer"])
        for group in self.optimizer.param_groups:
            if config.get("lr_override") is not None:
                group["lr"] = config["lr_override"]
            group["lr"] = group["lr"] * self.overrides.lr_scale
            if self.overrides.eps is not None and "eps" in group:
                group["eps"] = self.overrides.eps
        self.scheduler = (call_user(Phase.INIT, model_file.build_scheduler, self.optimizer)
                          if model_file.build_scheduler is not None else None)
        self.scaler: Any = None
        if self.spec.uses_grad_scaler:
            loss_scale = config["loss_scale"]
            if loss_scale == "dynamic":
                self.scaler = torch.amp.GradScaler(device.type, init_scale=config["init_scale"])
            elif loss_scale != "none":
                self.scaler = StaticScaler(float(loss_scale))
        if initial_state is not None:
            initial_state(self)
        self.params = params
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        self.init_sites = sites
        self._first_recorded_step: Optional[int] = None

    # ---- facts for the trace --------------------------------------------------------------------
    def optimizer_facts(self) -> dict[str, Any]:
        group = self.optimizer.param_groups[0]
        facts: dict[str, Any] = {"name": type(self.optimizer).__name__}
        for key in ("lr", "eps", "weight_decay", "momentum", "betas"):
            if key in group:
                value = group[key]
                facts[key] = list(value) if isinstance(value, tuple) else (float(value) if isinstance(value, (int, float, torch.Tensor)) else value)
        return facts

    # ---- the step -------------------------------------------------------------------------------
    def _context(self) -> contextlib.AbstractContextManager:
        if self.autocast:
            return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)
        return contextlib.nullcontext()

    def _switch_dtype(self, dtype: torch.dtype) -> None:
        self.model.to(dtype)
        for state in self.optimizer.state.values():
            for key, value in list(state.items()):
                if isinstance(value, torch.Tensor) and value.is_floating_point() and key != "step":
                    state[key] = value.to(dtype)
        self.autocast = False
        self.scaler = None
        self.compute_dtype = dtype

    def _seed_step(self, step: int, salt: int) -> None:
        if self.model_file.restore_rng is not None:
            self.model_file.restore_rng(step)
        else:
            seed_everything(step_seed(self.seed, step, salt))

    def run_step(self, step: int, recorder: Optional[Recorder] = None, tracer: Optional[OriginTracer] = None) -> StepResult:
        if self.overrides.switch_dtype_at and step == self.overrides.switch_dtype_at[0]:
            self._switch_dtype(self.overrides.switch_dtype_at[1])
        record = StepRecord(step=step)
        result = StepResult(record=record)

        def phase(p: Phase) -> None:
            if tracer is not None:
                tracer.set_phase(p)

        ours = tracer.suspended if tracer is not None else contextlib.nullcontext

        # data
        phase(Phase.DATA)
        self._seed_step(step, 1)
        sites = None
        if recorder is not None and step == self._first_recorded_step:
            batch, sites = call_user(Phase.DATA, record_tensor_sites, self.model_file.get_batch, step)
        else:
            batch = call_user(Phase.DATA, self.model_file.get_batch, step)
        training_step = self.model_file.training_step
        if training_step is not None:
            batch = (batch, None)      # training_step takes get_batch's value as it is
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise InputError(f"model file {self.model_file.display}: get_batch(step) must return (inputs, targets), "
                             f"got {type(batch).__name__}"
                             f"{' of length ' + str(len(batch)) if isinstance(batch, (tuple, list)) else ''}.")
        inputs, targets = batch
        fix = self.overrides.batch_fix
        if fix == "sanitise":
            inputs, targets = _sanitise(inputs), _sanitise(targets)
        with ours():
            record.batch = batch_stats(inputs, targets)
        if sites is not None:
            for b, (_, t) in zip(record.batch, _named_batch(inputs, targets)):
                b.source = site_for(sites, t)
        bad = [b for b in record.batch if b.nan or b.inf]
        if bad and fix == "skip":
            record.skipped = True      # the experiment drops batches holding NaN/Inf
            return result
        if bad:
            result.failure = "batch"
            first = bad[0]
            result.event = NonfiniteEvent(
                precision=self.precision.value, step=step, phase=Phase.DATA.value,
                kind="nan" if first.nan else "inf", tensor=first.name, count=first.nan + first.inf,
                surfaced_in="batch",
                detail=", ".join(f"{b.name}: {b.nan} NaN, {b.inf} Inf of {b.numel}" for b in bad))
            result.surfaces = [t for name, t in _named_batch(inputs, targets) if name == first.name]
            return result
        inputs = _to_device(inputs, self.device, self.compute_dtype if self.spec.cast_model or self.overrides.switch_dtype_at else None)
        targets = _to_device(targets, self.device, self.compute_dtype if self.spec.cast_model or self.overrides.switch_dtype_at else None)

        # forward
        self.optimizer.zero_grad(set_to_none=True)
        phase(Phase.FORWARD)
        self._seed_step(step, 2)
        with self._context():
            if training_step is not None:
                outputs = loss = call_user(Phase.FORWARD, training_step, self.model, inputs)
            elif isinstance(inputs, dict):
                outputs = call_user(Phase.FORWARD, self.model, **inputs)
            elif isinstance(inputs, (tuple, list)):
                outputs = call_user(Phase.FORWARD, self.model, *inputs)
            else:
                outputs = call_user(Phase.FORWARD, self.model, inputs)
            with ours():
                record.labels = label_check(outputs, targets) if training_step is None else None
            # Without a user loss the default cross-entropy would index with these targets (a
            # device-side assert on CUDA): stop before it. A user loss may use them differently.
            abort = self.model_file.loss_fn is None or self.device.type == "cuda"
            if record.labels is not None and record.labels.out_of_range and abort:
                lc = record.labels
                result.error = UserError(
                    phase=Phase.LOSS.value, exc_type="LabelOutOfRange",
                    message=f"{lc.out_of_range} class target(s) in {lc.tensor} outside [0, {lc.num_classes}) "
                            f"(min {lc.min}, max {lc.max}); the loss was not computed (on CUDA this is a device-side assert)",
                    source=None, user_source=None)
                return result
            if training_step is None:
                phase(Phase.LOSS)
                loss_fn = self.model_file.loss_fn or default_loss
                loss = call_user(Phase.LOSS, loss_fn, outputs, targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
            raise InputError(f"model file {self.model_file.display}: the loss must be a floating-point scalar tensor, "
                             f"got {type(loss).__name__}{' of shape ' + str(list(loss.shape)) if isinstance(loss, torch.Tensor) else ''}.")
        record.loss = None  # filled from the step's single host transfer

        # backward
        phase(Phase.BACKWARD)
        scale = self.scaler.get_scale() if self.scaler is not None else 1.0
        scaled = self.scaler.scale(loss) if self.scaler is not None else loss
        call_user(Phase.BACKWARD, scaled.reshape(()).backward)
        phase(Phase.OPTIMIZER)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if recorder is not None:
            recorder.after_backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        grad_norm_before_clip = None
        if recorder is None and grads:      # the recorder measures it itself
            with ours():
                grad_norm_before_clip = stats.foreach_norms(grads).square().sum().sqrt()
        clip = self.overrides.grad_clip if self.overrides.grad_clip is not None else self.config["grad_clip"]
        if clip:
            torch.nn.utils.clip_grad_norm_(self.params, clip)
        if recorder is not None:
            recorder.before_optimizer_step()
        if self.scaler is not None:
            call_user(Phase.OPTIMIZER, self.scaler.step, self.optimizer)
            self.scaler.update()
            new_scale = self.scaler.get_scale()
            record.skipped = (new_scale < scale) if isinstance(self.scaler, torch.amp.GradScaler) else self.scaler.skipped_last
            record.loss_scale = scale
        else:
            call_user(Phase.OPTIMIZER, self.optimizer.step)
        if self.scheduler is not None:
            call_user(Phase.OPTIMIZER, self.scheduler.step)
        record.lr = float(self.optimizer.param_groups[0]["lr"])
        if recorder is not None:
            recorder.after_optimizer_step()
            step_stats = recorder.finish_step(loss, grad_scale=scale)
            result.stats = step_stats
            record.loss = step_stats.loss
            record.grad_norm = step_stats.total_grad_norm
            # Finiteness from max |x|: an L2 norm of huge but finite values can overflow.
            grads_finite = all(g is None or math.isfinite(g) for g in step_stats.param_grad_max)
            # An L2 norm overflows only for elements beyond ~1e19: as good as non-finite.
            params_finite = all(math.isfinite(n) for n in step_stats.param_norm)
            bad_grads = [self.param_names[id(p)] for p, g in zip(self.params, step_stats.param_grad_max)
                         if g is not None and not math.isfinite(g)]
        else:
            with ours():
                norms = stats.foreach_norms([p.detach() for p in self.params], math.inf)
                grad_norms = stats.foreach_norms(grads, math.inf) if grads else torch.zeros(0)
                values = torch.cat([loss.detach().float().reshape(1),
                                    (grad_norm_before_clip.reshape(1) if grad_norm_before_clip is not None else torch.zeros(1)).to(norms.device),
                                    norms, grad_norms.to(norms.device)]).tolist()
            record.loss, record.grad_norm = values[0], values[1]
            params_finite = all(math.isfinite(v) for v in values[2:2 + len(self.params)])
            grads_finite = all(math.isfinite(v) for v in values[2 + len(self.params):])
            bad_grads = [] if grads_finite else [self.param_names[id(p)] for p, v in zip(
                [p for p in self.params if p.grad is not None], values[2 + len(self.params):]) if not math.isfinite(v)]
        record.nonfinite_grads = bad_grads
        if record.loss is None or not math.isfinite(record.loss):
            result.failure, result.surfaces = "loss", [loss]
        elif not grads_finite and not record.skipped:
            result.failure = "gradients"
            result.surfaces = [p.grad for p in self.params if p.grad is not None]
        elif not params_finite:
            result.failure, result.surfaces = "parameters", list(self.params)
        return result


def _named_batch(inputs: Any, targets: Any) -> list[tuple[str, torch.Tensor]]:
    return ([("inputs" + p, t) for p, t in stats.iter_tensors(inputs)]
            + [("targets" + p, t) for p, t in stats.iter_tensors(targets)])


def batch_stats(inputs: Any, targets: Any) -> list[BatchTensorStats]:
    """NaN/Inf counts and ranges of every batch tensor, moved to the host in one transfer.

    Reductions run in the tensor's own dtype (no float64 copy of the batch on the hot path);
    only the five scalars per tensor are widened."""
    named = _named_batch(inputs, targets)
    if not named:
        return []
    rows = []
    for _, t in named:
        x = t.detach()
        if x.numel() == 0 or x.dtype == torch.bool:
            rows.append(torch.zeros(5, dtype=torch.float64, device=x.device))
            continue
        if x.is_complex():
            x = x.abs()
        if x.is_floating_point():
            finite = torch.isfinite(x)
            low, high = torch.aminmax(torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device)))
            counts = [torch.isnan(x).sum(), torch.isinf(x).sum()]
        else:
            low, high = torch.aminmax(x)
            counts = [torch.zeros((), device=x.device), torch.zeros((), device=x.device)]
        low, high = low.to(torch.float64), high.to(torch.float64)
        rows.append(torch.stack([counts[0].to(torch.float64), counts[1].to(torch.float64),
                                 torch.maximum(low.abs(), high.abs()), low, high]))
    values = torch.stack([r.cpu() for r in rows]).tolist()
    out = []
    for (name, t), (nan, inf, max_abs, lo, hi) in zip(named, values):
        out.append(BatchTensorStats(name=name or "inputs", dtype=str(t.dtype).replace("torch.", ""),
                                    shape=list(t.shape), numel=t.numel(), nan=int(nan), inf=int(inf),
                                    max_abs=max_abs if t.numel() else None, min=lo if t.numel() else None,
                                    max=hi if t.numel() else None))
    return out


def label_check(outputs: Any, targets: Any) -> Optional[LabelCheck]:
    """Class targets against the logits' class count, before the loss indexes with them."""
    logits = _primary_output(outputs)
    if logits is None or not isinstance(targets, torch.Tensor) or targets.is_floating_point() \
            or targets.dtype == torch.bool or logits.dim() < 2 or targets.numel() == 0:
        return None
    if logits.dim() == 2 and targets.dim() == 1 and targets.shape[0] == logits.shape[0]:
        num_classes = logits.shape[1]                      # [N, C] with [N]
    elif targets.shape == logits.shape[:-1]:
        num_classes = logits.shape[-1]                     # [B, T, C] with [B, T]
    elif targets.shape == logits.shape[:1] + logits.shape[2:]:
        num_classes = logits.shape[1]                      # [B, C, H, W] with [B, H, W]
    else:
        return None
    t = targets.detach()
    valid = t != -100                                      # cross_entropy's default ignore_index
    kept = torch.where(valid, t, torch.zeros_like(t))
    lo, hi, bad, ignored = torch.stack([kept.amin(), kept.amax(), (valid & ((t < 0) | (t >= num_classes))).sum(),
                                        (~valid).sum()]).tolist()
    return LabelCheck(tensor="targets", num_classes=int(num_classes), min=int(lo), max=int(hi), out_of_range=int(bad),
                      ignored=int(ignored), total=t.numel())


def _to_device(obj: Any, device: torch.device, float_dtype: Optional[torch.dtype]) -> Any:
    if isinstance(obj, torch.Tensor):
        obj = obj.to(device, non_blocking=True)
        return obj.to(float_dtype) if float_dtype is not None and obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: _to_device(v, device, float_dtype) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device, float_dtype) for v in obj) if type(obj) in (list, tuple) \
            else [_to_device(v, device, float_dtype) for v in obj]
    return obj


def _sanitise(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) and obj.is_floating_point():
        return torch.nan_to_num(obj, nan=0.0, posinf=0.0, neginf=0.0)
    if isinstance(obj, dict):
        return {k: _sanitise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_sanitise(v) for v in obj) if type(obj) in (list, tuple) else [_sanitise(v) for v in obj]
    return obj
