"""One precision's training state (model, optimizer, scaler) and one training step's phases.

The same `run_step` serves the recorded run, the replay of a failing step (with a tracer)
and the confirming experiments (with overrides), so all three execute exactly the same code.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch

from ..errors import InputError
from ..load.model_file import ModelFile
from ..trace.vocab import Precision
from .precision import spec_of
from ..trace import ErrorCategory, NonfiniteEvent, Phase, StepRecord, UserError
from .compiled import is_wrapper, uncompiled
from .batch import _named_batch, _sanitise, _to_device, batch_stats, label_check
from .seeding import seed_everything, step_seed
from .training_defaults import StaticScaler, build_optimizer, default_loss
from .user_code import UserCodeFailed, call_user
from .probes import FinitenessCheck, StepFacts, StepProbe
from .recorder import StepStats
from .init_sites import record_init_sites, record_tensor_sites, site_for


@dataclass
class Overrides:
    """One change applied to a run (confirming experiments). Defaults change nothing."""
    lr_scale: float = 1.0
    grad_clip: Optional[float] = None
    eps: Optional[float] = None
    reinit: bool = False
    batch_fix: Optional[str] = None          # "sanitise": nan_to_num every batch; "skip": drop non-finite batches
    switch_dtype_at: Optional[tuple[int, torch.dtype]] = None  # run from this step on in this dtype


def optimizer_facts(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's settings as used (first param group): the trace's `optimizer` facts."""
    group = optimizer.param_groups[0]
    facts: dict[str, Any] = {"name": type(optimizer).__name__}
    for key in ("lr", "eps", "weight_decay", "momentum", "betas"):
        if key in group:
            value = group[key]
            facts[key] = list(value) if isinstance(value, tuple) else (float(value) if isinstance(value, (int, float, torch.Tensor)) else value)
    if group.get("fused"):
        facts["fused"] = True       # one kernel computing in float32 whatever the parameters' dtype
    return facts


def _accelerator_initialised() -> bool:
    return any(getattr(getattr(torch, name, None), "is_initialized", lambda: False)()
               for name in ("cuda", "xpu", "mtia")) or torch.backends.mps.is_available()


@dataclass
class StepResult:
    record: StepRecord
    facts: Optional[StepFacts] = None       # what decided the step's outcome (None: it stopped before)
    failure: Optional[str] = None          # batch | loss | gradients | parameters
    event: Optional[NonfiniteEvent] = None
    error: Optional[UserError] = None
    surfaces: list = field(default_factory=list)   # tensors where the failure was seen (for the replay)

    @property
    def stats(self) -> Optional[StepStats]:
        """The recorder's numbers of this step, when a recorder watched it."""
        return self.facts if isinstance(self.facts, StepStats) else None


class _Probes:
    """The probes of one step, called together; the finiteness check is always among them."""

    def __init__(self, probes: list[StepProbe]):
        self.all = probes

    def on_phase(self, phase: Phase) -> None:
        for probe in self.all:
            probe.on_phase(phase)

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for probe in self.all:
                stack.enter_context(probe.suspended())
            yield

    def on_batch(self, batch: list) -> None:
        for probe in self.all:
            probe.on_batch(batch)

    def call(self, method: str) -> None:
        with self.suspended():
            for probe in self.all:
                getattr(probe, method)()

    def finish(self, loss: torch.Tensor, grad_scale: float) -> StepFacts:
        facts = None
        with self.suspended():
            for probe in self.all:
                facts = probe.finish(loss, grad_scale) or facts
        assert facts is not None, "the finiteness check always reports"
        return facts


class TrainingSession:
    """Model, optimizer and scaler for one precision, built the way the user's file says."""

    def __init__(self, model_file: ModelFile, config: dict[str, Any], precision: Precision, device: torch.device,
                 overrides: Optional[Overrides] = None, initial_state: Optional[Callable[["TrainingSession"], None]] = None):
        self.model_file = model_file
        self.config = config
        self.precision = precision
        self.spec = spec_of(precision)
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
        # A build_model() that compiles: the session keeps the user's module (eager, for the
        # traced replay and for names as the user wrote them) and the compiled wrapper beside it.
        self.compiled_model: Any = model if is_wrapper(model) else None
        model = uncompiled(model)
        self._forward_module: Any = model
        if self.overrides.reinit:
            for module in model.modules():
                if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
                    # A user module's own reset_parameters is user code: its failure is a finding.
                    call_user(Phase.INIT, module.reset_parameters)
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
        self._finiteness = FinitenessCheck(params)

    # ---- facts for the trace --------------------------------------------------------------------
    def optimizer_facts(self) -> dict[str, Any]:
        return optimizer_facts(self.optimizer)

    def _seed(self, seed: int) -> None:
        # A CPU run whose process never initialised an accelerator has only the CPU generator
        # to seed; anything else seeds every generator, as the session's first seed did.
        seed_everything(seed, cpu_only=self.device.type == "cpu" and not _accelerator_initialised())

    def _seed_step(self, step: int, salt: int) -> None:
        # A model file with restore_rng(step) (a crash bundle's replay) puts back the generator
        # states the step started from; a scan derives them from (seed, step).
        if self.model_file.restore_rng is not None:
            self.model_file.restore_rng(step)
        else:
            self._seed(step_seed(self.seed, step, salt))

    # ---- the step -------------------------------------------------------------------------------
    def _context(self) -> contextlib.AbstractContextManager:
        if self.autocast:
            return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)
        if self.overrides.switch_dtype_at and self.compute_dtype in (torch.float32, torch.float64):
            # A dtype experiment casts the model and the batch; tensors the user's step makes
            # itself (a GAN's noise, torch.randn in forward) follow the default dtype.
            return _default_dtype(self.compute_dtype)
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

    def run_step(self, step: int, *probes: StepProbe) -> StepResult:
        """One training step, watched by `probes` (a Recorder, an OriginTracer); without a
        recorder the session's own finiteness check decides whether the step failed."""
        if self.overrides.switch_dtype_at and step == self.overrides.switch_dtype_at[0]:
            self._switch_dtype(self.overrides.switch_dtype_at[1])
        watch = _Probes(list(probes) if any(isinstance(p, FinitenessCheck) for p in probes)
                        else [self._finiteness, *probes])
        result = StepResult(record=StepRecord(step=step))
        batch = self._data_phase(step, watch, result)
        if batch is None:
            return result
        loss = self._forward_loss_phase(step, batch, watch, result)
        if loss is None:
            return result
        scale = self._backward_phase(loss, watch)
        self._unscale_clip_phase(watch)
        self._optimizer_phase(scale, watch, result.record)
        return self._finish(loss, scale, watch, result)

    # ---- phases ---------------------------------------------------------------------------------
    def _data_phase(self, step: int, watch: _Probes, result: StepResult) -> Optional[tuple[Any, Any]]:
        """The batch, checked before use; None when the step ends here (non-finite or skipped)."""
        record = result.record
        watch.on_phase(Phase.DATA)
        self._seed_step(step, 1)
        sites = None
        if any(p.wants_batch_sources() for p in watch.all):
            batch, sites = call_user(Phase.DATA, record_tensor_sites, self.model_file.get_batch, step)
        else:
            batch = call_user(Phase.DATA, self.model_file.get_batch, step)
        if self.model_file.training_step is not None:
            batch = (batch, None)      # training_step(model, batch) takes get_batch's value as it is
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise InputError(f"model file {self.model_file.display}: get_batch(step) must return (inputs, targets), "
                             f"got {type(batch).__name__}"
                             f"{' of length ' + str(len(batch)) if isinstance(batch, (tuple, list)) else ''}.")
        inputs, targets = batch
        fix = self.overrides.batch_fix
        if fix == "sanitise":
            inputs, targets = _sanitise(inputs), _sanitise(targets)
        with watch.suspended():
            record.batch = batch_stats(inputs, targets)
        if sites is not None:
            for b, (_, t) in zip(record.batch, _named_batch(inputs, targets)):
                b.source = site_for(sites, t)
        bad = [b for b in record.batch if b.nan or b.inf]
        if bad and fix == "skip":
            record.skipped = True      # the experiment drops batches holding NaN/Inf
            return None
        if bad:
            result.failure = "batch"
            first = bad[0]
            result.event = NonfiniteEvent(
                precision=self.precision.value, step=step, phase=Phase.DATA.value,
                kind="nan" if first.nan else "inf", tensor=first.name, count=first.nan + first.inf,
                surfaced_in="batch",
                detail=", ".join(f"{b.name}: {b.nan} NaN, {b.inf} Inf of {b.numel}" for b in bad))
            result.surfaces = [t for name, t in _named_batch(inputs, targets) if name == first.name]
            return None
        # A dtype experiment casts the batch from its switch on; before it, a mixed precision's
        # batch stays as the user made it (casting 9e4 targets to the autocast float16 would make
        # them inf at step 0, a failure the run itself never had).
        switch = self.overrides.switch_dtype_at
        cast = self.compute_dtype if self.spec.cast_model or (switch is not None and step >= switch[0]) else None
        inputs, targets = _to_device(inputs, self.device, cast), _to_device(targets, self.device, cast)
        if sites is not None:
            watch.on_batch([(b.name, t, b.source) for b, (_, t) in zip(record.batch, _named_batch(inputs, targets))])
        return inputs, targets

    def _forward_loss_phase(self, step: int, batch: tuple[Any, Any], watch: _Probes,
                            result: StepResult) -> Optional[torch.Tensor]:
        """Forward and loss under the precision's autocast; None when the label guard stops the step."""
        inputs, targets = batch
        self.optimizer.zero_grad(set_to_none=True)
        watch.on_phase(Phase.FORWARD)
        self._seed_step(step, 2)
        with self._context():
            if self.model_file.training_step is not None:
                # The user's own step computes the loss (a crash bundle's replay): no label
                # guard, no separate loss phase.
                return self._checked_loss(call_user(Phase.FORWARD, self.model_file.training_step, self._forward_module, inputs))
            outputs = self._forward(inputs)
            with watch.suspended():
                result.record.labels = label_check(outputs, targets)
            if self._label_guard(result):
                return None
            watch.on_phase(Phase.LOSS)
            loss = self._loss(outputs, targets, result.record)
        return self._checked_loss(loss)

    def _checked_loss(self, loss: Any) -> torch.Tensor:
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
            raise InputError(f"model file {self.model_file.display}: the loss must be a floating-point scalar tensor, "
                             f"got {type(loss).__name__}{' of shape ' + str(list(loss.shape)) if isinstance(loss, torch.Tensor) else ''}.")
        return loss

    def compile_forward(self) -> bool:
        """Run the forward through the compiled model from now on: the one build_model() returned,
        or torch.compile(model) with the config's `compile` backend. True when it does. Only the
        recorded run does this; replays stay eager (ops traced one by one, per-layer statistics)."""
        backend = self.config.get("compile", False)
        if self.compiled_model is None and backend:
            self.compiled_model = torch.compile(self.model, backend="inductor" if backend is True else backend)
        if self.compiled_model is not None:
            self._forward_module = self.compiled_model
        return self.compiled_model is not None

    def _forward(self, inputs: Any) -> Any:
        model = self._forward_module
        if isinstance(inputs, dict):
            return call_user(Phase.FORWARD, model, **inputs)
        if isinstance(inputs, (tuple, list)):
            return call_user(Phase.FORWARD, model, *inputs)
        return call_user(Phase.FORWARD, model, inputs)

    def _label_guard(self, result: StepResult) -> bool:
        """Without a user loss the default cross-entropy would index with out-of-range targets
        (a device-side assert on CUDA): stop before it. A user loss may use them differently."""
        labels = result.record.labels
        abort = self.model_file.loss_fn is None or self.device.type == "cuda"
        if labels is None or not labels.out_of_range or not abort:
            return False
        result.error = UserError(
            phase=Phase.LOSS.value, exc_type="LabelOutOfRange",
            message=f"{labels.out_of_range} class target(s) in {labels.tensor} outside [0, {labels.num_classes}) "
                    f"(min {labels.min}, max {labels.max}); the loss was not computed (on CUDA this is a device-side assert)",
            source=None, user_source=None, category=ErrorCategory.LABEL_GUARD.value)
        return True

    def _loss(self, outputs: Any, targets: Any, record: StepRecord) -> Any:
        loss_fn = self.model_file.loss_fn or default_loss
        try:
            return call_user(Phase.LOSS, loss_fn, outputs, targets)
        except UserCodeFailed as failed:
            if record.labels is not None and record.labels.out_of_range:
                # The loss indexed with class targets outside [0, C): the label guard's
                # fact, whatever the loss's own message says.
                failed.error.category = ErrorCategory.LABEL_GUARD.value
            raise

    def _backward_phase(self, loss: torch.Tensor, watch: _Probes) -> float:
        """Backward of the (scaled) loss; returns the loss scale it used."""
        watch.on_phase(Phase.BACKWARD)
        scale = self.scaler.get_scale() if self.scaler is not None else 1.0
        scaled = self.scaler.scale(loss) if self.scaler is not None else loss
        call_user(Phase.BACKWARD, scaled.reshape(()).backward)
        return scale

    def _unscale_clip_phase(self, watch: _Probes) -> None:
        watch.on_phase(Phase.OPTIMIZER)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        watch.call("after_backward")       # gradients as the optimizer will see them, before clipping
        clip = self.overrides.grad_clip if self.overrides.grad_clip is not None else self.config["grad_clip"]
        if clip:
            torch.nn.utils.clip_grad_norm_(self.params, clip)

    def _optimizer_phase(self, scale: float, watch: _Probes, record: StepRecord) -> None:
        watch.call("before_optimizer_step")
        if self.scaler is not None:
            call_user(Phase.OPTIMIZER, self.scaler.step, self.optimizer)
            self.scaler.update()
            new_scale = self.scaler.get_scale()
            record.skipped = (new_scale < scale) if isinstance(self.scaler, torch.amp.GradScaler) else self.scaler.skipped_last
            record.loss_scale = scale
        else:
            call_user(Phase.OPTIMIZER, self.optimizer.step)
        # The learning rate this step's update used; the scheduler then sets the next step's.
        record.lr = float(self.optimizer.param_groups[0]["lr"])
        if self.scheduler is not None:
            call_user(Phase.OPTIMIZER, self.scheduler.step)
        watch.call("after_optimizer_step")

    def _finish(self, loss: torch.Tensor, scale: float, watch: _Probes, result: StepResult) -> StepResult:
        """One host transfer, then the step's one finiteness verdict: loss, gradients, parameters."""
        facts = watch.finish(loss, scale)
        record = result.record
        result.facts = facts
        record.loss, record.grad_norm = facts.loss, facts.total_grad_norm
        record.nonfinite_grads = [self.param_names[id(p)] for p, g in zip(self.params, facts.param_grad_max)
                                  if g is not None and not math.isfinite(g)]
        if not facts.loss_finite:
            result.failure, result.surfaces = "loss", [loss]
        elif not facts.grads_finite and not record.skipped:
            result.failure = "gradients"
            result.surfaces = [p.grad for p in self.params if p.grad is not None]
        elif not facts.params_finite:
            result.failure, result.surfaces = "parameters", list(self.params)
        return result


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
