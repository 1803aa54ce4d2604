"""`nandoctor.watch`: an always-on NaN/Inf guard inside the user's own training loop.

Per optimizer step it checks, on the device, the batch, the loss, every gradient (one fused
`_foreach_norm` in an optimizer step pre-hook, before the weights are touched) and the
parameters after the step, and moves one small flag vector to the host: one synchronisation
per step. On the first non-finite value it writes a crash bundle (load/bundle.py) that
`nandoctor replay` re-runs with the origin tracer, then raises, skips the step or warns.

The flag vector is the seam for a rank-aware variant (distributed runs): `flag_hook` receives
it just before the host transfer (an all-reduce of every rank's slot goes there), and
`note_local_gradients` is what a DDP communication hook calls with a gradient bucket before
the all-reduce mixes ranks.
"""
from __future__ import annotations

import contextlib
import functools
import math
import operator
import os
import sys
import threading
import warnings
import weakref
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.optim.optimizer as _optim_module     # its global step hooks (torch imports it anyway)

from .compile_settings import compile_settings, compiled_graphs, compiled_since
from ..load.bundle import STATE_AFTER_STEP, STATE_BEFORE_STEP, BundleManifest
from ..run import compiled, stats
from ..trace.thresholds import DEFAULT_THRESHOLDS
from ..run.precision import autocast_precision
from ..run.fused_paths import recorded_paths
from ..trace.paths import paths_to_plain
from ..trace.plain import to_plain
from . import bundle_writer
from .distributed import attach_if_distributed, local_tensor
from .early_warnings import EarlyWarningSampler, InstabilityWarning, early_warning_options
from .spikes import GradientRing, SpikeDetector, explain_spike, spike_options, spike_warning
from .flags import BAD_SLOTS, FLAGS, RAW, SLOT as _SLOT, device_flags, host_flags
from .keep_alive import KeepAlive, RollbackBudgetSpent
from .policies import NONFINITE_POLICIES, SPIKE_POLICIES, rank_agreed
from .sample_blame import LoaderIndices
from .snapshot import Snapshot
from . import update_bounds

POLICIES = NONFINITE_POLICIES     # "stop" is "raise" by another name
UPDATE_SAMPLE = 1 << 10


def _update_sample(p: torch.Tensor) -> torch.Tensor:
    return stats.strided_sample(p, UPDATE_SAMPLE, odd_stride=True)
# Where a step's gradients are checked: the optimizer's step pre-hook, the end of each backward
# pass (a loop that updates weights by hand), or wherever a framework callback calls
# check_gradients() ("manual"). "auto" picks the first two by whether there is an optimizer.
GRADIENT_CHECKS = ("auto", "optimizer-hook", "backward", "manual")
FP16_MAX = 65504.0
# Attribute readers for the per-parameter loops of every step (a model may have thousands).
_GRAD, _VERSION = operator.attrgetter("grad"), operator.attrgetter("_version")
# Filters and sums of the per-step path in C (no Python frame per element: each costs in a real
# step, where the interpreter's own code and data are cold).
_NOT_NONE = functools.partial(operator.is_not, None)
MAX_MICRO_BATCHES = 1024   # a loop that never calls optimizer.step() must not hold batches forever


class NonFiniteError(RuntimeError):
    """Raised by `watch` (policy "raise") on the first NaN/Inf; the crash bundle is already written."""

    def __init__(self, message: str, bundle: Optional[Path], step: int, what: str):
        super().__init__(message)
        self.bundle = bundle
        self.step = step
        self.what = what


class NonFiniteWarning(RuntimeWarning):
    """Emitted by `watch` with policy "warn" or "skip"."""


class _Capture:
    """What the current optimizer step needs for a replay: its micro-batches and RNG states."""

    def __init__(self, step: int, rng: dict[str, Any]):
        self.step = step
        self.rng = rng
        self.batches: list[Any] = []
        # Per micro-batch: a scalar, non-finite when the batch holds NaN/Inf (stats.nonfinite_witness;
        # exactly then unless `quick_checks`); None for a batch with no floating tensor (token ids).
        self.batch_checks: list[Optional[torch.Tensor]] = []
        self.quick_checks = False
        self.calls: list[dict[str, Any]] = []          # the model's training forwards: {"args", "kwargs"}
        self.sample_indices: list[Optional[list[int]]] = []   # per micro-batch: its dataset indices
        self.output_losses: list[torch.Tensor] = []    # a model output's .loss (Hugging Face style)
        self.explicit_losses: list[torch.Tensor] = []  # watch.loss(t), or what `nandoctor run` saw backward() on
        self.truncated = False

    @property
    def losses(self) -> list[torch.Tensor]:
        # What the loop backpropagates is the loss; an output's .loss only stands in for it.
        return self.explicit_losses or self.output_losses

    def first_bad_batch(self) -> Optional[int]:
        """The first micro-batch holding NaN/Inf, or None (slow path: a host sync per batch; a
        quick witness that tripped is confirmed on the batch itself)."""
        return next((i for i, check in enumerate(self.batch_checks)
                     if check is not None and not math.isfinite(float(check))
                     and (not self.quick_checks or stats.holds_nonfinite(stats.floating_tensors(self.batches[i])))),
                    None)


class Watch:
    """See `watch()`. Also a context manager: leaving it removes every hook."""

    def __init__(self, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, scaler: Any = None,
                 out: str | Path = "nandoctor-bundles", on_nonfinite: str = "raise", stats_every: int = 50,
                 window: int = 64, check_every: int = 1, sink: Any = None, *, scheduler: Any = None,
                 snapshot: bool = False, precision: Optional[str] = None, grad_clip: Optional[float] = None,
                 skip_streak: int = 5, scale_floor: float = DEFAULT_THRESHOLDS["scale_floor"], rebuild: Optional[dict[str, Any]] = None, max_bundles: int = 1,
                 gradient_check: str = "auto", notify: Optional[Callable[[dict[str, Any]], None]] = None,
                 distributed: Any = "auto", inputs: str = "forward", warn: bool = True, batch_check: bool = True,
                 on_spike: str = "warn", rollback: Optional[dict[str, Any]] = None, skip_list: Any = None,
                 sample_loss: Optional[Callable[..., torch.Tensor]] = None, spikes: Any = None,
                 early_warnings: Any = None):
        if on_nonfinite not in POLICIES:
            raise ValueError(f"on_nonfinite must be one of {', '.join(POLICIES)}, got {on_nonfinite!r}")
        if on_spike not in SPIKE_POLICIES:
            raise ValueError(f"on_spike must be one of {', '.join(SPIKE_POLICIES)}, got {on_spike!r}")
        on_nonfinite = "raise" if on_nonfinite == "stop" else on_nonfinite
        if gradient_check not in GRADIENT_CHECKS:
            raise ValueError(f"gradient_check must be one of {', '.join(GRADIENT_CHECKS)}, got {gradient_check!r}")
        if inputs not in ("forward", "manual"):
            raise ValueError(f"inputs must be 'forward' or 'manual', got {inputs!r}")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"nandoctor.watch: model must be a torch.nn.Module, got {type(model).__name__}")
        self.compiled_as = compile_settings(model)      # read before anything unwraps the model
        self._graphs_before = compiled_graphs()
        optimizer = unwrap_optimizer(optimizer)
        if gradient_check == "auto":
            # No optimizer (a hand-written update): a step ends when a backward pass ends.
            gradient_check = "optimizer-hook" if optimizer is not None else "backward"
        if gradient_check == "optimizer-hook" and optimizer is None:
            raise ValueError("gradient_check='optimizer-hook' needs an optimizer")
        scaler = active_scaler(scaler)
        self.model, self.optimizer, self.scaler, self.scheduler = model, optimizer, scaler, scheduler
        self.gradient_check = gradient_check
        self.out = Path(out)
        self.policy = on_nonfinite
        self.spike_policy = on_spike
        # Skip lists, rolling copies for rollback, the samples of a fired step (watcher/keep_alive.py).
        self.keep_alive = KeepAlive(self.out, on_nonfinite, on_spike, rollback, skip_list, sample_loss)
        self._blaming = False                   # the per-sample re-run is running: the hooks stand aside
        self.stats_every = max(0, int(stats_every or 0))
        self.check_every = max(1, int(check_every))
        self.window = max(1, int(window))
        self.sink = sink
        self.grad_clip = grad_clip
        self.skip_streak = skip_streak
        self.scale_floor = scale_floor
        self._scale_settled = False     # the scaler made an update: its calibration from init_scale is over
        self._streak_fired = False
        self.max_bundles = max_bundles
        self.precision = precision or _infer_precision(model, scaler)
        self._precision_given = precision is not None
        self.rebuild = rebuild or plain_rebuild(compiled.uncompiled(model))
        self.flag_hook: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        self.write_hook: Optional[Callable[..., Path]] = None   # under torchrun: writes this rank's part
        self.notify = notify                    # called with each firing's event before the policy acts
        self.warn = warn                        # False: no NonFiniteWarning (the caller reports every event)
        # False: a NaN in the model's inputs alone does not fire (a model may clean its own
        # inputs); the loss or gradients it makes do. The flags still tell a raise on NaN data.
        self.batch_check = batch_check
        # What a bundle stores as the step's micro-batches (`nandoctor run` stores every top-level
        # call and DataLoader batch of the step); default: the captured micro-batches.
        self.batch_provider: Optional[Callable[[_Capture], list[Any]]] = None
        self.fired_capture: Optional[_Capture] = None   # the step the latest firing is about
        self.oversized_steps: list[int] = []    # steps after which the weights' norm overflowed, values finite

        self.step_index = 0                     # optimizer steps finished (skipped ones included)
        self.history: deque[dict[str, Any]] = deque(maxlen=self.window)
        self.layer_stats: deque[dict[str, Any]] = deque(maxlen=self.window)
        self.bundles: list[Path] = []
        self.events: deque[dict[str, Any]] = deque(maxlen=self.window)  # recent firings: step, check, what, bundle
        self.nonfinite_steps = 0                # every firing, counted
        self._warned: set[str] = set()
        self.skipped_steps = 0
        self._skip_run = 0
        self._capture: Optional[_Capture] = None
        self._previous: Optional[_Capture] = None   # the step whose parameters the next sync checks
        self._params_unchecked = False              # _params_norm is of weights no sync has checked yet
        self._local_grads_check: Optional[torch.Tensor] = None   # a witness (stats.nonfinite_witness)
        self._host: Optional[list[float]] = None    # this step's synced flag vector
        self._post_ran = False
        self._dropped = False
        self._deferred: Optional[torch.Tensor] = None   # check_every > 1: *_bad of unchecked steps (bool)
        self._deferred_from: Optional[int] = None       # the first of those steps
        self._lock = threading.RLock()
        self._closed = False
        self._handles: list[Any] = []
        self._stats_handles: list[Any] = []
        # A stats step's module outputs wait here for one fused max |x| (stats.foreach_max_abs)
        # when they reach stats.BATCH_BYTES or the step syncs: (module index, tensor, version).
        self._act_pending: list[tuple[int, torch.Tensor, int]] = []
        self._act_pending_bytes = 0
        self._act_reduced: list[tuple[list[int], torch.Tensor]] = []
        self._act_eager: set[int] = set()     # modules whose outputs change in place after their hook
        self._act_owners: list[int] = []      # module of each reduced value, in transfer order
        # Names as the user wrote them (torch.compile's `_orig_mod.` left out). Per-layer
        # activation hooks go only on a model none of whose modules runs compiled.
        named = compiled.user_named_modules(model)      # one walk: ~3 ms on 1002 modules
        self._module_names = [name for name, _ in named]
        self._modules = [m for _, m in named]
        self._param_names = {id(p): n for n, p in compiled.user_named_parameters(model)}
        self._layer_hooks = not compiled.has_compiled_parts(model)
        self._versions: Optional[int] = None    # parameters' version counters when watch.step() began
        self._params_cache: list[torch.Tensor] = []
        self._params_layout: Optional[tuple] = None
        self._after_compiled_step = False       # the optimizer stepped inside a compiled train step
        self._stats_pending = False             # a statistics step's layer hooks wait for an eager forward
        self._early_pending = False             # so does an early-warning sampled step's
        self._snapshot = Snapshot(optimizer) if snapshot and optimizer is not None else None
        self._snapshot_scheduler: Any = None
        self._device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self._inputs_from_forward = inputs == "forward"
        self._explicit_batches = False          # the user called watch.step(batch): their batch wins
        # The weights' L2 norm after the last optimizer step: a 0-dim tensor on the device, read
        # at the next step's sync; a float on the CPU, read at once (no transfer to save there,
        # and its few norms are still in cache then).
        self._params_norm: Any = None
        # Updates since the weights were last read, and their norm then (host value): a step that
        # provably keeps them finite (watcher/update_bounds.py) need not read them again.
        self._updates_unread = 0
        self._read_weight_norm: Optional[float] = None
        self._weight_dtypes_covered = False
        self._update_before: Optional[list[torch.Tensor]] = None   # stats steps: weights before the step
        self._update_norm: Optional[torch.Tensor] = None
        self._constants: Optional[tuple[torch.Tensor, torch.Tensor]] = None   # float64 0 and NaN on the device
        self._end_of_backward_queued = False
        self._has_dtensors: dict[int, bool] = {}   # list length (parameters, gradients) -> holds DTensors
        self._grad_norms, self._weight_norms = stats.GroupedNorms(), stats.GroupedNorms()
        # BatchNorm-style running statistics change in the forward itself: a before-step bundle
        # must hold them as the failing step's first forward found them (one fused copy per step
        # into buffers kept across steps; a few numbers per normalisation layer).
        self._running_stats = _running_stat_buffers(model)
        self._running_copy: Optional[list[torch.Tensor]] = None
        self._running_copy_step: Optional[int] = None
        # Spikes (watcher/spikes.py) and sampled early warnings (watcher/early_warnings.py): both
        # append to early_warnings; a spike goes to handle_spike() (skip/rollback) when one exists.
        self.early_warnings: list[Any] = []
        spike_opts = spike_options(spikes)
        self.spike_detector = SpikeDetector(**spike_opts) if spike_opts else None
        self._grad_ring = GradientRing() if spike_opts else None
        early_opts = early_warning_options(early_warnings)
        self.early = EarlyWarningSampler(model, early_opts, self._record_warning) if early_opts else None

        if gradient_check == "optimizer-hook":
            self._handles.append(optimizer.register_step_pre_hook(self._optimizer_pre_hook))
        if optimizer is not None:
            self._handles.append(optimizer.register_step_post_hook(self._optimizer_post_hook))
        # Parameters of the model that another optimizer updates inside the step (a GAN's
        # discriminator, stepped in the middle of the generator's step): a before-step bundle
        # needs them as the step found them. A global step pre-hook copies them just before that
        # optimizer touches them; no copy at all for a loop with one optimizer.
        self._other_copy: dict[str, torch.Tensor] = {}
        self._step_hooks_signature: Optional[tuple] = None
        self._step_hooks_own = False
        self._other_copy_step: Optional[int] = None
        if optimizer is not None:
            install_other_optimizer_hook()
            _LIVE_WATCHES.add(self)
        self._input_hook = None
        if self._inputs_from_forward:
            self._input_hook = model.register_forward_pre_hook(self._model_input_hook, with_kwargs=True)
            self._handles.append(self._input_hook)
        # always_call: the hook also runs when forward raises, so a batch that made the model's own
        # checks raise (BCE's range check on NaN) still leaves a bundle.
        self._handles.append(model.register_forward_hook(self._model_output_hook, always_call=True, with_kwargs=True))
        # Accelerate (and the Trainer through it) applies autocast inside the model's forward
        # (`model.forward = autocast(forward)`): the model's own hooks run outside that region and
        # see float32, its children's pre-hooks run inside it. Removed once a mixed precision is seen.
        self._autocast_probes: list[Any] = []
        # Not on a compiled model: hooks inside its graph are guarded by the compiler, and removing
        # them would recompile it (as the per-layer hooks, `_layer_hooks`).
        if not self._precision_given and self._layer_hooks:
            self._autocast_probes = [child.register_forward_pre_hook(self._child_autocast_hook)
                                     for child in compiled.uncompiled(model).children()]
            self._handles.extend(self._autocast_probes)
        LoaderIndices.install()
        self._scaler_update = None
        self.attach_scaler(scaler)
        # Under torchrun a rank-aware layer sets flag_hook and write_hook (watcher/distributed.py).
        self.distributed = attach_if_distributed(self, distributed)

    # ---- public surface ---------------------------------------------------------------------
    @contextlib.contextmanager
    def step(self, batch: Any = None):
        """One micro-batch of the user's loop. The optimizer step that follows (in this block or a
        later one, with gradient accumulation) closes the training step."""
        self.begin_micro_batch(batch)
        if self._versions is None and self._capture is not None and self.optimizer is not None:
            # Only this block can close a train step compiled around the optimizer (framework
            # callbacks and `nandoctor run` see every optimizer step through its hooks).
            self._versions = _version_sum(self.params())
        try:
            yield self
            self._close_compiled_step()
        except Exception as err:
            self.raised_on_nonfinite_batch(err)
            raise
        finally:
            if self.early is not None:      # no forward runs past the block (a KeyboardInterrupt may have ended one)
                self.early.forward_ended()
            self._remove_stats_hooks_if_done()

    def loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Check this loss (no host sync here: it joins the step's flag vector). Returns it."""
        if compiled.compiling():    # inside a compiled step: the loss it returns is checked outside
            return loss
        if isinstance(loss, torch.Tensor) and self._capture is not None and not stats.is_transform_wrapped(loss):
            self._capture.explicit_losses.append(loss.detach())
        return loss

    def close(self) -> None:
        """Remove every hook; check the parameters of the last step."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            _LIVE_WATCHES.discard(self)
            for handle in self._handles + self._stats_handles:
                handle.remove()
            self._handles.clear()
            self._stats_handles.clear()
            if self.early is not None:
                self.early.close()
            if self.distributed is not None:
                self.distributed.close()
            LoaderIndices.uninstall()
            self.keep_alive.close()
            if self._scaler_update is not None:
                if self.scaler.__dict__.get("update") == self._scaler_update_hook:
                    del self.scaler.update
                self._scaler_update = None
        if self._updates_unread and self.optimizer is not None:
            # The last updates were not read (watcher/update_bounds.py): a run never ends on weights
            # nobody read. One read, at the end.
            self._note_parameters(self._local(self.params()))
        if (self._params_unchecked and self._params_norm is not None and not math.isfinite(_total(self._params_norm))
                and self._nonfinite_parameters()):
            previous, self._previous = self._previous, None
            self._params_unchecked = False
            self._fire("parameters", self._parameters_what(), previous, closing=True)

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def add_handle(self, handle: Any) -> None:
        """A hook handle (from a framework callback) to remove with the watch's own on close."""
        if self._closed:
            handle.remove()
        else:
            self._handles.append(handle)

    def attach_scaler(self, scaler: Any) -> None:
        """Record this GradScaler's skipped steps (`nandoctor run` finds the scaler only when the
        script first calls `scaler.step(optimizer)`). A disabled scaler is no scaler."""
        scaler = active_scaler(scaler)
        if scaler is None or self._scaler_update is not None or not hasattr(scaler, "update"):
            return
        self.scaler = scaler
        if self.precision == "32-true":
            self.precision = "16-mixed"
        # A step the scaler skips never calls optimizer.step(): scaler.update() is where it ends.
        self._scaler_update = scaler.update
        scaler.update = self._scaler_update_hook

    def params(self) -> list[torch.Tensor]:
        """The parameters this watch checks: the optimizer's, or the model's trainable ones (a
        shared list: do not modify it)."""
        if self.optimizer is None:
            return [p for p in self.model.parameters() if p.requires_grad]
        # Rebuilt only when the groups' lists change (add_param_group, a new list): a flat list of
        # a 1000-parameter model, built twice a step, was ~0.1 ms of its step.
        groups = self.optimizer.param_groups
        if len(groups) == 1:
            only = groups[0]["params"]
            layout: Any = (id(only), len(only))
        else:
            layout = tuple((id(g["params"]), len(g["params"])) for g in groups)
        if layout != self._params_layout:
            self._params_cache = [p for g in self.optimizer.param_groups for p in g["params"]]
            self._params_layout = layout
        return self._params_cache

    def end_backward_step(self) -> None:
        """A loop with no optimizer: the backward pass that just ended closes the step (the
        check, then the step's bookkeeping). The weights are still those the step used."""
        if self._closed:
            return
        self.check_gradients()
        if not self._closed:
            self._finish_step(skipped=self._dropped)

    def note_local_gradients(self, tensor: torch.Tensor) -> None:
        """For a DDP communication hook: flag a gradient bucket that is non-finite before the
        all-reduce mixes ranks (no host sync; it joins the step's flag vector)."""
        check = stats.nonfinite_witness([tensor.detach()])
        self._local_grads_check = check if self._local_grads_check is None else self._local_grads_check + check

    # ---- step boundaries --------------------------------------------------------------------
    def begin_micro_batch(self, batch: Any, rng: Optional[dict[str, Any]] = None) -> None:
        """A micro-batch enters the step (framework callbacks call this; `step()` does in a plain loop).
        `rng`: every generator's state taken just now by the caller (`capture_rng()`), if it has one."""
        # The user's batches win; the forward pre-hook stays (removing it would recompile a train
        # step compiled around the model) but only adds a statistics step's layer hooks.
        self._explicit_batches = True
        self._begin(batch, rng)

    def _begin(self, batch: Any, rng: Optional[dict[str, Any]] = None, forward_of: Any = None) -> None:
        """`forward_of`: the model, when its own forward pre-hook begins the step (its forward is
        already running, so the sampler's global hooks installed now must enter it themselves)."""
        if self._closed:
            return
        if self._capture is None:
            if self.optimizer is None and self.step_index > 0:
                # A hand-written update ran after the last backward: its weights are checked
                # with this step's one transfer.
                self._note_parameters(self._local(self.params()))
            self._capture = _Capture(self.step_index, rng if rng is not None else bundle_writer.capture_rng())
            if self._running_stats:
                self._save_running_stats(self.step_index)
            self._host = None
            if self._stats_step(self.step_index) and self._layer_hooks:
                if self._explicit_batches and self._input_hook is not None:
                    # Added by the forward pre-hook once the forward runs, and only if it runs
                    # eagerly: inside a compiled train step they would change the graph's guards.
                    self._stats_pending = True
                else:
                    self._add_stats_hooks()
            if self.early is not None:
                if self._explicit_batches and self._input_hook is not None:
                    self._early_pending = True     # like the stats hooks: only for an eager forward
                else:
                    self.early.begin_step(self.step_index, forward_of=forward_of)
        capture = self._capture
        if len(capture.batches) >= MAX_MICRO_BATCHES:
            capture.truncated = True
            return
        capture.batches.append(batch)
        capture.sample_indices.append(LoaderIndices.of(batch))
        # Integer-only batches (token ids) cannot hold NaN: None keeps checks aligned with batches. The
        # witness is taken under no_grad: inputs that need a gradient (a block's activations, from a
        # LightningModule's training_step) must not gain graph nodes or saved tensors (non-reentrant
        # checkpointing counts those against its recomputation).
        # Quick (float32) witnesses where a tripped one can be confirmed on this step's own batch;
        # exact ones where the flags leave the step unconfirmed: exchanged with other ranks, or
        # folded into a later step's check (check_every > 1).
        capture.quick_checks = self.flag_hook is None and self.check_every == 1 and self.distributed is None
        capture.batch_checks.append(stats.nonfinite_witness(stats.floating_tensors(batch), exact=not capture.quick_checks))

    def _save_running_stats(self, step: int) -> None:
        if not self._running_stats:
            return
        live = [t for _, t in self._running_stats]
        with stats.grad_off():
            if self._running_copy is None or any(c.shape != t.shape or c.dtype != t.dtype or c.device != t.device
                                                 for c, t in zip(self._running_copy, live)):
                self._running_copy = [t.detach().clone() for t in live]
            else:
                torch._foreach_copy_(self._running_copy, [t.detach() for t in live])
        self._running_copy_step = step

    def _other_optimizer_pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if optimizer is self.optimizer or self._capture is None or compiled.compiling():
            return
        step = self._capture.step
        if self._other_copy_step != step:
            self._other_copy, self._other_copy_step = {}, step
        held = {id(p) for p in self.params()}
        with stats.grad_off():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    name = self._param_names.get(id(p))
                    if name is not None and id(p) not in held and name not in self._other_copy:
                        self._other_copy[name] = p.detach().clone()

    def _state_dict_for(self, capture: Optional[_Capture], state: str) -> dict[str, Any]:
        """The model's state for a bundle: before the step, its running statistics as they were
        before the step's first forward updated them, and the parameters another optimizer
        updated during the step as they were before it did."""
        state_dict = compiled.user_state_dict(self.model)
        if state == STATE_BEFORE_STEP and capture is not None and capture.step == self._other_copy_step:
            state_dict.update({name: saved for name, saved in self._other_copy.items() if name in state_dict})
        if (state != STATE_BEFORE_STEP or capture is None or self._running_copy is None
                or capture.step != self._running_copy_step):
            return state_dict
        for (name, _), saved in zip(self._running_stats, self._running_copy):
            if name in state_dict:
                state_dict[name] = saved
        return state_dict

    def _model_input_hook(self, module: Any, args: Any, kwargs: Any) -> None:
        # Hooks alone are enough: each training forward of the model is a micro-batch, its inputs
        # the batch (unless the user marks micro-batches with watch.step(batch) themselves).
        if compiled.compiling():
            return
        if self._stats_pending:
            self._stats_pending = False
            self._add_stats_hooks()
        if self._early_pending:
            self._early_pending = False
            self.early.begin_step(self.step_index, forward_of=module)
        if self._explicit_batches or self._blaming or not torch.is_grad_enabled() or not module.training:
            return
        if stats.in_functorch_transform():
            # functional_call inside torch.func.vmap/grad: a per-sample view, not the step's batch.
            # The gradients the transform produces are still checked at optimizer.step().
            return
        self._begin(forward_inputs(args, kwargs), forward_of=module)

    def _note_autocast(self) -> None:
        # The loop's own `with torch.autocast(...)`: only a forward sees it (forward hooks run
        # inside it). Bundles and replays then run under the same autocast, not in float32.
        mixed = autocast_precision((self._device.type, "cpu") if self._device.type != "cpu" else ("cpu",))
        if mixed is not None and self.precision != mixed:
            self.precision = mixed

    def _child_autocast_hook(self, module: Any, args: Any) -> None:
        if compiled.compiling() or self._blaming or not module.training or not torch.is_grad_enabled():
            return
        self._note_autocast()
        if self.precision.endswith("-mixed"):
            self._drop_autocast_probes()

    def _model_output_hook(self, module: Any, args: Any, kwargs: Any, output: Any) -> None:
        if compiled.compiling():
            return
        if output is None:
            # torch calls an always_call hook with no output when forward raised.
            raised = sys.exc_info()[1]
            if raised is not None and not isinstance(raised, NonFiniteError):
                self.raised_on_nonfinite_batch(raised)
            return
        if self._capture is None or self._blaming or not torch.is_grad_enabled() or stats.in_functorch_transform():
            return
        training = module.training      # a property of torch.compile's wrapper: read once
        if training and not self._precision_given:
            self._note_autocast()
        if training and len(self._capture.calls) < MAX_MICRO_BATCHES:
            # What the per-sample re-run calls the model with (references only: no copy, no sync).
            self._capture.calls.append(forward_inputs(args, kwargs))
        if self.gradient_check == "backward":
            self._arm_end_of_backward(output)
        if type(output) is torch.Tensor:        # (the common case; a getattr on a tensor raises inside)
            return
        # Hugging Face style outputs carry their loss: check it without asking the user.
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._capture.output_losses.append(loss.detach())

    def raised_on_nonfinite_batch(self, error: BaseException) -> bool:
        """The loop raised (the model's forward, a loss's range check: BCE on a NaN row). When a
        micro-batch of this step holds NaN/Inf, that is the story: bundle the step, and say so on
        the exception (a note; raising from here would be silenced by torch). True when it did."""
        capture = self._capture
        if self._closed or capture is None or getattr(error, "_nandoctor_noted", False):
            return False
        bad = capture.first_bad_batch()
        if bad is None:
            return False
        try:
            error._nandoctor_noted = True     # one note, however many hooks see the exception
        except AttributeError:
            pass
        what = f"the batch holds NaN/Inf ({describe_nonfinite_rows(capture.batches[bad])}); the code then " \
               f"raised {type(error).__name__}"
        step = capture.step
        bundle = None
        if len(self.bundles) < self.max_bundles:
            bundle = self._write("batch", what, capture, step, STATE_BEFORE_STEP)
            self.bundles.append(bundle)
        self.events.append({"step": step, "check": "batch", "what": what, "bundle": str(bundle) if bundle else None,
                            "raised": type(error).__name__})
        self.nonfinite_steps += 1
        self.fired_capture = capture
        if self.notify is not None:
            self.notify(self.events[-1])
        note = f"nandoctor.watch: step {step}: {what}."
        if bundle is not None:
            note += " " + replay_hint(bundle, self.rebuild)
        if hasattr(error, "add_note"):
            error.add_note(note)
        if self.warn and "batch" not in self._warned:
            self._warned.add("batch")
            warnings.warn(note, NonFiniteWarning, stacklevel=2)
        return True

    def _arm_end_of_backward(self, output: Any) -> None:
        # No optimizer step to hook: the end of the backward pass through this output closes the
        # step. A grad hook on the output runs inside that backward; the engine callback it
        # queues runs once the whole backward (every .grad accumulated) is done.
        for t in stats.floating_tensors(output):
            if t.requires_grad:
                t.register_hook(self._queue_end_of_backward)

    def _queue_end_of_backward(self, grad: torch.Tensor) -> None:
        if not self._end_of_backward_queued:
            self._end_of_backward_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)

    def _end_of_backward(self) -> None:
        self._end_of_backward_queued = False
        self.end_backward_step()

    def _optimizer_pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> Optional[tuple]:
        if compiled.compiling():     # a compiled train step: checked when watch.step() ends
            return None
        # With a closure (LBFGS) the gradients exist only once the closure has run.
        wrapped = with_checked_closure(args, kwargs, lambda closure: self.check_gradients())
        if wrapped is None:
            self.check_gradients()
        return wrapped

    def check_gradients(self) -> None:
        """The step's one host sync: batch, loss, gradients, and the previous step's parameters.
        Framework callbacks call it where gradients are final (after unscaling, before clipping)."""
        if self._closed:
            return
        capture = self._capture or _Capture(self.step_index, bundle_writer.capture_rng())
        self._capture = capture
        if self.early is not None:
            self.early.end_passes()
        params = self.params()
        grads = self._local(list(filter(_NOT_NONE, map(_GRAD, params))))   # one .grad read per parameter
        stats_step = self._stats_step(capture.step)
        with stats.grad_off():
            # A vector, or for a few (summed on the host) a tuple of scalars: the gradient ring keeps
            # the last steps' norms, which for a long list should stay one tensor, not one per parameter.
            norms = self._grad_norms(grads, stacked=len(grads) > HOST_TOTAL_NORMS) if grads else None
        if self.step_index % self.check_every and not stats_step and self.check_every > 1:
            self._defer(capture, norms)
            return
        since = self._deferred_from
        self.keep_alive.begin_check(capture.step)
        host, extra = self._sync(capture, norms, stats_step)
        self._host = host
        if not math.isnan(host[_SLOT["param_norm"]]):     # the weights read after the last update
            self._read_weight_norm = host[_SLOT["param_norm"]]
        self._complete_previous_history(host)
        if stats_step:
            self._record_layer_stats(capture.step, extra, grads)
        what = self._what(host, capture, grads)
        if host[_SLOT["params_bad"]] and not self._nonfinite_parameters():
            # An L2 norm overflowed, not a value: weights beyond ~1e19 are a blow-up to report
            # (the history's param_norm is inf), but the first truly non-finite value is still to come.
            self.oversized_steps.append(max(capture.step - 1, 0))
            host[_SLOT["params_bad"]] = 0.0
        if since is not None and (what is not None or host[_SLOT["params_bad"]]):
            # Unchecked steps were folded in: the step is only known to lie in since..now.
            text = what[1] if what is not None else self._parameters_what()
            self._fire(what[0] if what is not None else "parameters",
                       f"{text} (seen at the check of step {capture.step}; check_every={self.check_every} covers "
                       f"steps {since}..{capture.step})", capture)
            if self.policy in ("skip", "rollback"):
                self._drop_gradients()
            return
        if host[_SLOT["params_bad"]]:
            previous, self._previous = self._previous, None
            self._fire("parameters", self._parameters_what(), previous)
            if self.policy in ("skip", "rollback"):
                self._drop_gradients()
                return
        if host[_SLOT["listed_bad"]]:
            # A sample that an earlier run's skip list names is in this step (on some rank): no update.
            self.keep_alive.resume_skipped.append(capture.step)
            self.skipped_steps += 1
            self._drop_gradients()
            return
        if what is not None:
            check, text = what
            # With a GradScaler, non-finite gradients are an overflow the scaler skips by design:
            # recorded as a skip when scaler.update() runs, not fired.
            if not (check == "gradients" and self.scaler is not None):
                self._fire(check, text, capture)
                if self.policy in ("skip", "rollback"):
                    self._drop_gradients()
                    return
        if what is None and self.spike_detector is not None and self._check_spike(capture, host, norms):
            return
        self.keep_alive.healthy(self, capture.step)
        if self._snapshot is not None:
            self._snapshot.save()
            self._snapshot_scheduler = _scheduler_state(self.scheduler)
        if self.early is not None and self.early.active and self.optimizer is not None:
            self.early.before_update(self._local(params))
        if stats_step and self.optimizer is not None:
            with stats.grad_off():
                # Strided samples of at most UPDATE_SAMPLE elements (as the recorder's update ratios):
                # a clone of every weight was one more model's worth of peak RSS on each stats step.
                self._update_before = [_update_sample(p).clone() for p in self._local(params)]

    def _optimizer_post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._closed or compiled.compiling():
            return
        self._after_optimizer_step(optimizer)

    def _close_compiled_step(self) -> None:
        """The end of `watch.step()`, outside any compiled code. When the optimizer stepped inside
        a compiled train step (the parameters' version counters moved, no hook of ours ran), the
        step's checks run here: batch, loss, the gradients still held, then the new weights."""
        if self._closed or self._capture is None or self._versions is None or self.optimizer is None:
            return
        if _version_sum(self.params()) == self._versions:
            return          # no optimizer step yet (gradient accumulation) or an eager one already closed it
        self._after_compiled_step = True
        try:
            self.check_gradients()
            if not self._closed and self._capture is not None:
                self._after_optimizer_step(self.optimizer)
        finally:
            self._after_compiled_step = False

    def _after_optimizer_step(self, optimizer: Any) -> None:
        params = self._local(self.params() if optimizer is self.optimizer
                             else [p for g in optimizer.param_groups for p in g["params"]])
        if self._update_kept_finite(optimizer):
            self._params_norm, self._params_unchecked = None, False
            self._updates_unread += 1
        else:
            self._note_parameters(params)
        if self._update_before is not None and len(self._update_before) == len(params):
            # Statistics steps only: |update| / |weights before| of the whole model, each sample's sums
            # of squares times numel / sampled (the same positions: a parameter's shape is unchanged).
            before = self._update_before
            with stats.grad_off():
                delta = torch._foreach_sub([_update_sample(p) for p in params], before)
                share = torch.tensor([p.numel() / max(1, b.numel()) for p, b in zip(params, before)])
                update = stats.foreach_norms(delta).square()
                share = share.to(update.device, update.dtype)
                weight = stats.foreach_norms(before).square().mul_(share).sum().sqrt()
                self._update_norm = update.mul_(share).sum().sqrt() / weight.clamp_min(1e-30)
        self._update_before = None
        if self.early is not None and self.early.active:
            self.early.after_update(optimizer, params, self._owners(optimizer))
        self._post_ran = True
        self._finish_step(skipped=self._dropped)

    def _note_parameters(self, params: list[torch.Tensor]) -> None:
        """The weights after an update: their total norm is checked at the next step's sync (or
        at close), so a step has one host sync; it is also the history's param_norm."""
        with stats.grad_off():
            norms = self._weight_norms(params, stacked=len(params) > HOST_TOTAL_NORMS) if params else None
            self._params_norm = None if norms is None else _total(norms) if type(norms) is tuple \
                else stats.total_norm(norms)
        self._params_unchecked = params != []
        self._updates_unread = 0
        self._weight_dtypes_covered = update_bounds.dtypes_covered(params)

    def weights_replaced(self) -> None:
        """Other weights were put in place (a rollback's copy, an lr experiment's rewind): the
        next update's weights are read, not bounded from the norm read before the replacement
        (a norm still waiting for its sync describes the replaced weights: dropped too)."""
        self._read_weight_norm = None
        self._params_norm, self._params_unchecked = None, False

    def _update_kept_finite(self, optimizer: Any) -> bool:
        """This step's update provably left finite weights finite (watcher/update_bounds.py), so
        they need not be read now: the watch's own optimizer, a synced step (its gradient norm is
        known), weights read within the last RECHECK_EVERY updates and then bounded, no statistics
        step, and no step hook but the watch's that could write the weights."""
        host = self._host
        if (optimizer is not self.optimizer or host is None or not self._weight_dtypes_covered
                or self._updates_unread + 1 >= update_bounds.RECHECK_EVERY or self._update_before is not None
                or self._stats_step(self.step_index)):
            return False
        return (update_bounds.keeps_weights_finite(optimizer, host[_SLOT["grad_norm"]], self._read_weight_norm)
                and self._own_step_hooks_only(optimizer))

    def _own_step_hooks_only(self, optimizer: Any) -> bool:
        dicts = (optimizer._optimizer_step_pre_hooks, optimizer._optimizer_step_post_hooks,
                 _optim_module._global_optimizer_pre_hooks, _optim_module._global_optimizer_post_hooks)
        # Hooks are keyed by their handle's id, and every new handle's id is larger than any before
        # it: a dict whose length is unchanged after hooks came and went has a larger sum of keys.
        # So (lengths, sums) changes whenever the hooks do, and they are looked at only then.
        try:
            signature: Optional[tuple] = (*map(len, dicts), *map(sum, dicts))
        except TypeError:       # keys that are not handle ids (a dict written by hand): look every time
            signature = None
        if signature is None or signature != self._step_hooks_signature:
            self._step_hooks_own = all(getattr(hook, "__self__", None) is self or getattr(hook, _OWN_HOOK, False)
                                       for hooks in dicts for hook in hooks.values())
            self._step_hooks_signature = signature
        return self._step_hooks_own

    def _local(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """This rank's shards of FSDP2's DTensors (checked once per parameter set: a per-tensor
        conversion on every step of a model with thousands of parameters shows in its step time)."""
        sharded = self._has_dtensors.get(len(tensors))
        if sharded is None:
            sharded = self._has_dtensors[len(tensors)] = any(type(t).__name__ == "DTensor" for t in tensors)
        return [local_tensor(t) for t in tensors] if sharded else tensors

    def _scaler_update_hook(self, *args: Any, **kwargs: Any) -> Any:
        result = self.keep_alive.freeze.scaler_update(self.scaler, self._scaler_update, args, kwargs)
        if compiled.compiling():
            return result
        if not self._post_ran and not self._closed:
            # The scaler found inf/NaN gradients and skipped optimizer.step().
            capture = self._capture or _Capture(self.step_index, bundle_writer.capture_rng())
            self._capture = capture
            if self._host is None:
                self._host, _ = self._sync(capture, None, False)
                what = self._what(self._host, capture, [])
                if what is not None and what[0] in ("batch", "loss"):
                    self._fire(what[0], what[1], capture)
            self._skip_run += 1
            self.skipped_steps += 1
            self._finish_step(skipped=True)
            what = self._collapse_what()
            if what is not None:
                # Skipped steps leave the weights as they were: the last one replays from them.
                self._streak_fired = True
                self._fire("loss-scale", what, self._previous)
        else:
            self._skip_run = 0
            self._scale_settled = True
            self._streak_fired = False
        self._post_ran = False
        return result

    def _collapse_what(self) -> Optional[str]:
        """A streak of skips that is a collapse, said in words; None while it is not (yet) one.
        Before the scaler's first update it is calibrating from init_scale (65536 halving down to
        what the model needs: 8 skips for 256): only a scale below `scale_floor` is collapse then."""
        if self._streak_fired:
            return None
        scale = self.scaler.get_scale() if hasattr(self.scaler, "get_scale") else math.nan   # skips only: rare
        if scale < self.scale_floor:
            return (f"GradScaler skipped {self._skip_run} steps in a row and its scale fell to {_fmt(scale)}, below "
                    f"the floor of {_fmt(self.scale_floor)} (the loss scale collapsed; the model is not updating)")
        if self._scale_settled and self._skip_run >= self.skip_streak:
            return (f"GradScaler skipped {self._skip_run} steps in a row after it had settled (the loss scale "
                    "collapsed; the model is not updating)")
        return None

    def _complete_previous_history(self, host: list[float]) -> None:
        """The previous step's weights are known only now, from this step's one transfer."""
        if not self.history or self.history[-1]["step"] != self.step_index - 1:
            return
        entry = self.history[-1]
        for name in ("param_norm", "update_ratio"):
            value = host[_SLOT[name]]
            if not math.isnan(value):
                entry[name] = value

    def _lr(self) -> Optional[float]:
        if self.optimizer is None:
            return None
        lr = self.optimizer.param_groups[0].get("lr")
        return float(lr) if isinstance(lr, (int, float)) else float(lr.item()) if isinstance(lr, torch.Tensor) else None

    def _finish_step(self, skipped: bool) -> None:
        capture = self._capture
        host = self._host
        if host is None:
            entry = {"step": self.step_index, "skipped": skipped, "lr": self._lr()}
        else:
            entry = {"step": self.step_index, "skipped": skipped, "lr": self._lr(),
                     "loss": host[_SLOT["loss"]] if capture is None or capture.losses else None,
                     "grad_norm": host[_SLOT["grad_norm"]] if not skipped else None,
                     "scale": host[_SLOT["scale"]] if self.scaler is not None else None}
        self.history.append(entry)
        if self.sink is not None and host is not None:
            metrics = {k: v for k, v in (("loss", entry.get("loss")), ("grad_norm", entry.get("grad_norm")),
                                         ("scale", entry.get("scale"))) if v is not None}
            if self.layer_stats and self.layer_stats[-1]["step"] == self.step_index:
                stat = self.layer_stats[-1]
                for name, g, a in zip(stat["modules"], stat["grad_norm"], stat["act_max_abs"]):
                    if g is not None:
                        metrics[f"grad_norm/{name or 'model'}"] = g
                    if a:
                        metrics[f"fp16_headroom/{name or 'model'}"] = FP16_MAX / a
            _emit(self.sink, self.step_index, metrics)
        if self.early is not None:
            self.early.finish()
        self._previous = capture
        self._capture = None
        self._local_grads_check = None
        self._dropped = False
        self._versions = None
        self._remove_stats_hooks()
        if self._autocast_probes and not self._after_compiled_step:
            # A forward that applies autocast itself (Accelerate wraps it at prepare time) shows it
            # from the first step on: a step that trained without it ends the probing. Inside a
            # compiled train step the probes stay (inert there): removing them would recompile it.
            self._drop_autocast_probes()
        self.step_index += 1

    def _drop_autocast_probes(self) -> None:
        for handle in self._autocast_probes:
            handle.remove()
        self._autocast_probes = []

    # ---- the sync ----------------------------------------------------------------------------
    def _defer(self, capture: _Capture, norms: Any) -> None:
        """check_every > 1: no sync this step; its failed checks are folded into the next checked
        step's (which then reports the later step: the trade-off of checking less often)."""
        norms = stats.as_vector(norms) if norms is not None else None
        raw = self._witnesses(capture, norms)
        if self.distributed is not None:          # which rank flagged first, without a sync
            self.distributed.note_deferred(capture.step, device_flags(raw, len(capture.losses), norms is not None))
        bad = ~torch.isfinite(raw[:BAD_SLOTS])
        self._deferred = bad if self._deferred is None else self._deferred | bad
        if self._deferred_from is None:
            self._deferred_from = capture.step
        self._params_unchecked = False
        self._host = None

    def _sync(self, capture: _Capture, norms: Any, stats_step: bool) -> tuple[list[float], list[float]]:
        dev = self._device
        losses, has_grads = len(capture.losses), norms is not None
        if dev.type == "cpu" and self.flag_hook is None and not stats_step and self._deferred is None:
            values = self._witness_values(capture, norms)
            self._params_unchecked = False
            return host_flags(values, losses, has_grads), []
        norms = stats.as_vector(norms) if norms is not None else None
        raw = self._witnesses(capture, norms)
        deferred, self._deferred, self._deferred_from = self._deferred, None, None
        if self.flag_hook is not None:
            # The rank-aware layer exchanges the FLAGS layout itself (the *_bad slots of every rank).
            flags = device_flags(raw, losses, has_grads)
            if deferred is not None:
                flags = torch.cat([torch.maximum(flags[:BAD_SLOTS], deferred.to(dev, flags.dtype)), flags[BAD_SLOTS:]])
            parts, head = [self.flag_hook(flags)], len(FLAGS)
        else:
            parts, head = [raw], len(RAW)
            if deferred is not None:
                parts.append(deferred.to(dev, raw.dtype))
                head += BAD_SLOTS
        if stats_step:
            self._reduce_acts()
            self._act_owners = [i for owners, _ in self._act_reduced for i in owners]
            parts += [values.to(dev, raw.dtype) for _, values in self._act_reduced]
            self._act_reduced = []
            if norms is not None:
                parts.append(norms.to(dev, raw.dtype))
        values = (torch.cat(parts) if len(parts) > 1 else parts[0]).tolist()   # the one host transfer
        self._params_unchecked = False
        if self.flag_hook is not None:
            return values[:head], values[head:]
        host = host_flags(values[:len(RAW)], losses, has_grads)
        if deferred is not None:
            for slot, folded in enumerate(values[len(RAW):head]):
                host[slot] = max(host[slot], folded)
        return host, values[head:]

    def _witness_parts(self, capture: _Capture) -> list[Any]:
        """This step's checks in the RAW layout (watcher/flags.py), less the gradients' norm: per
        slot a plain float, or a list of one-element tensors whose float64 sum is the witness (a
        witness is non-finite when its check fails, and only then but for a quick batch witness,
        which `_what` confirms; the values follow)."""
        checks = list(filter(_NOT_NONE, capture.batch_checks))
        params_norm = self._params_norm
        if isinstance(params_norm, torch.Tensor):
            params_norm = [params_norm]
        scale = getattr(self.scaler, "_scale", None)
        scale = [scale] if isinstance(scale, torch.Tensor) else (
            float(self.scaler.get_scale()) if self.scaler is not None and hasattr(self.scaler, "get_scale") else 0.0)
        update_ratio = [self._update_norm] if self._update_norm is not None else math.nan
        self._update_norm = None
        return [checks or 0.0, capture.losses or 0.0, None,
                params_norm if params_norm is not None and self._params_unchecked else 0.0,
                [self._local_grads_check] if self._local_grads_check is not None else 0.0,
                math.nan if self.keep_alive.resume_skip and self.keep_alive.listed(capture) else 0.0,
                scale, params_norm if params_norm is not None else math.nan, update_ratio]

    def _witnesses(self, capture: _Capture, norms: Optional[torch.Tensor]) -> torch.Tensor:
        """The witnesses as one float64 vector on the device, for one transfer. One stack, however
        many checks: a small model's step is a few milliseconds, and each tiny kernel shows."""
        dev = self._device
        if self._constants is None:
            self._constants = (torch.zeros((), dtype=torch.float64, device=dev),
                               torch.full((), math.nan, dtype=torch.float64, device=dev))
        zero, nan = self._constants

        def on_device(part: Any) -> torch.Tensor:
            if isinstance(part, list):
                if len(part) == 1:
                    return part[0].reshape(()).to(dev, torch.float64)
                return torch.stack([t.reshape(()).to(dev, torch.float64) for t in part]).sum()
            return zero if part == 0.0 else nan if math.isnan(part) else \
                torch.full((), part, dtype=torch.float64, device=dev)
        parts = self._witness_parts(capture)
        parts[2] = stats.total_norm(norms.to(dev)) if norms is not None else zero
        return torch.stack([part if isinstance(part, torch.Tensor) else on_device(part) for part in parts])

    def _witness_values(self, capture: _Capture, norms: Any) -> list[float]:
        """The witnesses read where they are, for a CPU step: there is no transfer to save there,
        and the casts and the stack of `_witnesses` are ~5 tiny kernels (~40-70 us of a real step,
        cold in cache). The gradients' and the weights' per-tensor norms are totalled here too."""
        values = self._witness_parts(capture)
        for slot, part in enumerate(values):
            if type(part) is list:
                values[slot] = part[0].item() if len(part) == 1 else sum(t.item() for t in part)
        values[2] = 0.0 if norms is None else _total(norms)
        return values

    def _what(self, host: list[float], capture: _Capture, grads: list[torch.Tensor]) -> Optional[tuple[str, str]]:
        if host[_SLOT["batch_bad"]] and self.batch_check and (not capture.quick_checks
                                                              or capture.first_bad_batch() is not None):
            return "batch", "the batch holds NaN/Inf"
        if host[_SLOT["loss_bad"]]:
            return "loss", f"the loss is {_fmt(host[_SLOT['loss']])}"
        if host[_SLOT["grads_bad"]] or host[_SLOT["local_grads_bad"]]:
            names = [self._param_names.get(id(p), "?") for p in self.params()
                     if p.grad is not None and not bool(torch.isfinite(local_tensor(p.grad)).all())]
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            return "gradients", f"non-finite gradients in {shown or 'the gradients'}"
        return None

    def _nonfinite_parameters(self) -> list[str]:
        """Names of the parameters holding NaN/Inf values (slow path: only when a flag fired)."""
        names = self._param_names
        return [names.get(id(p), "?") for p in self.params()
                if not bool(torch.isfinite(local_tensor(p.detach())).all())]

    def _parameters_what(self) -> str:
        names = self._nonfinite_parameters()
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        where = "optimizer.step()" if self.optimizer is not None else "the update after the backward pass"
        return f"parameters became non-finite in {where}: {shown or 'a parameter'}"

    def compile_settings(self) -> Optional[dict[str, Any]]:
        """How the watched run was compiled (the bundle's `compile`); None when it was not."""
        return self.compiled_as or compiled_since(self._graphs_before)

    # ---- firing ------------------------------------------------------------------------------
    def _fire(self, check: str, what: str, capture: Optional[_Capture], state: str = STATE_BEFORE_STEP,
              closing: bool = False) -> None:
        step = capture.step if capture is not None else max(self.step_index - 1, 0)
        self.fired_capture = capture
        bundle = None
        if self.distributed is not None:          # name the origin rank(s)
            what = self.distributed.describe(check, what)
        if check == "parameters":
            state = STATE_BEFORE_STEP if self._snapshot is not None and self._snapshot.ready else STATE_AFTER_STEP
        if len(self.bundles) < self.max_bundles:
            bundle = self._write(check, what, capture, step, state)
            self.bundles.append(bundle)
        self.events.append({"step": step, "check": check, "what": what, "bundle": str(bundle) if bundle else None})
        self.nonfinite_steps += 1
        if self.notify is not None:
            self.notify(self.events[-1])
        message = f"nandoctor.watch: step {step}: {what}." + (" " + replay_hint(bundle, self.rebuild) if bundle else "")
        if self.policy in ("skip", "rollback") and self.keep_alive.enabled and check != "loss-scale" and not closing:
            try:
                message += self.keep_alive.act(self, self.policy, check, what, capture)
            except RollbackBudgetSpent as spent:
                self._stop(f"{message} Stopped: {spent}; skip list: {self.keep_alive.skip_list.path}.",
                           bundle, step, what)
            if self.policy == "rollback":
                self.skipped_steps += 1
        elif self.policy == "raise" and not closing and self.keep_alive.enabled:
            found = self.keep_alive.blame(self, check, capture)
            if found is not None and found["dominant"]:
                message += " Samples that carry it: " + _blamed_text(found) + "."
        if self.policy == "raise" and not closing:
            self.close()
            raise NonFiniteError(message, bundle, step, what)
        if self.policy == "skip" and check == "parameters":
            if self._snapshot is not None and self._snapshot.ready:
                self._snapshot.restore()
                if self._snapshot_scheduler is not None and self.scheduler is not None:
                    self.scheduler.load_state_dict(self._snapshot_scheduler)
                message += " The step was undone from the snapshot."
            else:
                message += " It cannot be skipped after the fact without watch(snapshot=True)."
        elif self.policy == "skip" and check != "loss-scale":
            if not self.keep_alive.enabled:
                message += " The optimizer step was skipped."
            self.skipped_steps += 1
        if self.warn and check not in self._warned:   # once per kind of check: a run left going must not flood the log
            self._warned.add(check)
            warnings.warn(message, NonFiniteWarning, stacklevel=3)

    def _drop_gradients(self) -> None:
        # torch optimizers leave parameters whose .grad is None untouched: the step becomes a no-op.
        # A hand-written update (`p.data.add_(p.grad, alpha=-lr)`) needs a tensor there: zeros.
        for p in self.params():
            if self.optimizer is not None:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()
        self._dropped = True

    def _write(self, check: str, what: str, capture: Optional[_Capture], step: int, state: str) -> Path:
        if self._after_compiled_step:
            state = STATE_AFTER_STEP      # checked after the compiled step had updated the weights
        use_snapshot = state == STATE_BEFORE_STEP and check == "parameters" and self._snapshot is not None
        if use_snapshot:
            with self._snapshot.restored_view():
                return self._write_now(check, what, capture, step, state, self._snapshot_scheduler)
        return self._write_now(check, what, capture, step, state, None)

    def _write_now(self, check: str, what: str, capture: Optional[_Capture], step: int, state: str,
                   scheduler_state: Any) -> Path:
        scaler_state = None
        if self.scaler is not None and hasattr(self.scaler, "state_dict"):
            try:
                scaler_state = bundle_writer.encode_value(self.scaler.state_dict())
            except TypeError:
                scaler_state = None
        scheduler = bundle_writer.scheduler_part(self.scheduler)
        if scheduler is not None and scheduler_state is not None:
            scheduler["state"] = bundle_writer.encode_value(scheduler_state)
        manifest = BundleManifest(
            step=step, check=check, what=what, state=state, device=str(self._device), policy=self.policy,
            precision=self.precision,
            lr=[bundle_writer.encode_value(g["lr"]) for g in self.optimizer.param_groups] if self.optimizer else [],
            grad_clip=self.grad_clip, scaler=scaler_state, scheduler=scheduler,
            history=[bundle_writer.encode_value(h) for h in self.history],
            layer_stats=[bundle_writer.encode_value({k: v for k, v in s.items() if k != "modules"})
                         for s in self.layer_stats],
            rebuild=bundle_writer.encode_value(self.rebuild),
            compile=self.compile_settings(),
            # Which fused paths the step took (attention, optimizer, autocast): read now, from the
            # model and optimizer, so no step pays for it.
            paths=paths_to_plain(recorded_paths(self.model, [self.optimizer], self._device, self.precision,
                                                getattr(self.early, "sdpa_backends", None))),
            detail={"truncated_micro_batches": bool(capture and capture.truncated),
                    "layer_modules": self._module_names if self.layer_stats else [],
                    "early_warnings": [bundle_writer.encode_value(to_plain(w)) for w in self.early_warnings]})
        manifest.micro_step = _first_bad_micro_batch(check, capture)
        names = [self._param_names.get(id(p)) for p in self.params()]
        write = self.write_hook or bundle_writer.write_bundle     # per-rank parts under torchrun
        return write(self.out, manifest, self._state_dict_for(capture, state), self.optimizer,
                                          self._bundle_batches(capture), capture.rng if capture else None,
                                          param_names=names)

    def _bundle_batches(self, capture: Optional[_Capture]) -> list[Any]:
        if capture is None:
            return []
        return self.batch_provider(capture) if self.batch_provider is not None else capture.batches

    def _stop(self, message: str, bundle: Optional[Path], step: int, what: str) -> None:
        self.close()
        raise NonFiniteError(message, bundle, step, what)

    # ---- spikes (the detector calls this) --------------------------------------------------------
    def handle_spike(self, statistic: str, reason: str, capture: Any = None) -> bool:
        """Apply the on_spike policy to the step being checked (call it before the optimizer
        applies the update: inside the step's check). True when the step was skipped or rolled
        back; "warn" returns False. Every rank must call it on the same step."""
        capture = capture if capture is not None else self._capture
        if self.spike_policy == "warn" or self._closed or not self.keep_alive.enabled:
            return False
        step = capture.step if capture is not None else self.step_index
        message = f"nandoctor.watch: step {step}: {reason}."
        try:
            message += self.keep_alive.act(self, self.spike_policy, "spike", reason, capture, statistic=statistic)
        except RollbackBudgetSpent as spent:
            self._stop(f"{message} Stopped: {spent}; skip list: {self.keep_alive.skip_list.path}.", None, step, reason)
        self._drop_gradients()
        self.skipped_steps += 1
        self.events.append({"step": step, "check": "spike", "what": reason, "bundle": None,
                            "policy": self.spike_policy})
        if self.warn and "spike-policy" not in self._warned:
            self._warned.add("spike-policy")
            warnings.warn(message, NonFiniteWarning, stacklevel=2)
        return True

    def _check_spike(self, capture: _Capture, host: list[float], norms: Any) -> bool:
        """A loss or gradient-norm spike, from this step's synced numbers. True when a policy
        (`handle_spike`) skipped or rolled back the step."""
        self._grad_ring.add(capture.step, norms)
        # Under torchrun every rank must see the same numbers, or one rank would skip alone.
        loss, grad_norm = rank_agreed(self, host)
        spike = self.spike_detector.observe(capture.step, loss if capture.losses else None, grad_norm)
        if spike is None:
            return False
        # The slow path, on a spike only: which layer statistic moved first.
        owners = [self._param_names.get(id(p), "").rpartition(".")[0] for p in self.params() if p.grad is not None]
        sampled = {key: list(points) for key, points in self.early.series.items()} if self.early is not None else None
        moved = explain_spike(spike, self._grad_ring, owners, sampled)
        reason = spike.reason()
        if moved:
            first = moved[0]
            reason += (f"; moved first: {first.statistic} of {first.module or 'the model'} "
                       f"({first.ratio:.3g}x its median, from step {first.first_step})")
        handler = getattr(self, "handle_spike", None)
        acted = bool(handler(spike.statistic, reason, capture)) if handler is not None else False
        action = self.spike_policy if acted else "warn"
        warning = spike_warning(spike, moved, action)
        self.spike_detector.track(warning)
        self._record_warning(warning, text=f"step {spike.step}: {reason}")
        return acted

    def _record_warning(self, warning: Any, text: Optional[str] = None) -> None:
        self.early_warnings.append(warning)
        if len(self.early_warnings) > 4 * self.window:       # a long run must not grow without bound
            del self.early_warnings[: self.window]
        if self.sink is not None:
            _emit(self.sink, warning.step, {f"early_warning/{warning.cause}": warning.value})
        if self.warn and warning.cause not in self._warned:
            self._warned.add(warning.cause)
            where = f" in {warning.module}" if warning.module else ""
            text = text or (f"step {warning.step}: {warning.statistic}{where} is {warning.value:.4g}"
                            + (f", {warning.ratio:.3g}x its value at step {warning.since_step}"
                               if warning.ratio and warning.since_step is not None and warning.since_step < warning.step else ""))
            warnings.warn(f"nandoctor.watch: {warning.cause}: {text} (`nandoctor explain {warning.cause}`).",
                          InstabilityWarning, stacklevel=4)

    def _owners(self, optimizer: Any) -> list[str]:
        return [self._param_names.get(id(p), "").rpartition(".")[0] for g in optimizer.param_groups for p in g["params"]]

    # ---- per-layer statistics ----------------------------------------------------------------
    def _stats_step(self, step: int) -> bool:
        return self.stats_every > 0 and step % self.stats_every == 0

    def _add_stats_hooks(self) -> None:
        self._act_pending, self._act_pending_bytes, self._act_reduced = [], 0, []
        for index, module in enumerate(self._modules):
            self._stats_handles.append(module.register_forward_hook(self._stats_hook(index)))

    def _stats_hook(self, index: int) -> Callable:
        def hook(module: Any, args: Any, output: Any) -> None:
            if stats.in_functorch_transform() or compiled.compiling():
                return
            if self.early is not None and self.early.in_mode:     # a sampled step: outside its mode
                with self.early.outside_mode():
                    note(output)
            else:
                note(output)

        def note(output: Any) -> None:
            if isinstance(output, torch.Tensor):
                tensors = [output] if (output.is_floating_point() or output.is_complex()) and output.numel() else []
            else:
                tensors = stats.floating_tensors(output)
            for t in tensors:
                self._act_pending.append((index, t, t._version))
                self._act_pending_bytes += t.numel() * t.element_size()
            if tensors and (self._act_pending_bytes >= stats.BATCH_BYTES or index in self._act_eager):
                self._reduce_acts()
        return hook

    def _reduce_acts(self) -> None:
        """One fused max |x| over the waiting outputs. An output changed in place since its hook
        is not measured this time; that module's outputs are reduced in its hook from then on."""
        pending, self._act_pending, self._act_pending_bytes = self._act_pending, [], 0
        keep = [(i, t) for i, t, version in pending if t._version == version]
        self._act_eager.update(i for i, t, version in pending if t._version != version)
        if keep:
            self._act_reduced.append(([i for i, _ in keep], stats.foreach_max_abs([t for _, t in keep])))

    def _remove_stats_hooks(self) -> None:
        self._stats_pending = self._early_pending = False
        for handle in self._stats_handles:
            handle.remove()
        self._stats_handles.clear()
        self._act_pending, self._act_pending_bytes, self._act_reduced = [], 0, []

    def _remove_stats_hooks_if_done(self) -> None:
        if self._capture is None:
            self._remove_stats_hooks()

    def _record_layer_stats(self, step: int, extra: list[float], grads: list[torch.Tensor]) -> None:
        count = len(self._act_owners)
        acts: list[Optional[float]] = [None] * len(self._modules)
        for index, value in zip(self._act_owners, extra[:count]):
            # The largest over the step's micro-batches and over a module's output tensors; NaN wins.
            previous = acts[index]
            acts[index] = value if previous is None or math.isnan(value) or (not math.isnan(previous) and value > previous) else previous
        norms = extra[count:]
        owner: dict[str, float] = {}
        grad_params = [p for p in self.params() if p.grad is not None]
        for p, n in zip(grad_params, norms):
            module = self._param_names.get(id(p), "").rpartition(".")[0]
            owner[module] = owner.get(module, 0.0) + n * n
        grad_norm = [math.sqrt(owner[name]) if name in owner else None for name in self._module_names]
        self.layer_stats.append({"step": step, "modules": self._module_names, "act_max_abs": acts,
                                 "grad_norm": grad_norm})


def watch(model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, scaler: Any = None,
          out: str | Path = "nandoctor-bundles", on_nonfinite: str = "raise", stats_every: int = 50,
          window: int = 64, check_every: int = 1, sink: Any = None, **options: Any) -> Watch:
    """Guard a training loop against NaN/Inf (README, "Watch your own training loop").

    `with watch.step(batch):` marks each micro-batch; `watch.loss(loss)` adds the loss to the
    check (a model output's `.loss` is picked up by itself). On the first non-finite batch,
    loss, gradient or parameter a crash bundle is written to `out`, then `on_nonfinite`
    decides: "raise" (or "stop") NonFiniteError, "skip" the optimizer step, "warn", or "rollback"
    to a copy kept every `rollback={"every": K, "keep": N, "budget": B}` steps; `on_spike`
    ("warn", "skip", "rollback") does the same for spikes. Skips and rollbacks, with the samples
    that carried them (`sample_loss=` names them better), go to `out/skip_list.json`;
    `skip_list=` honours an earlier run's list (docs/guides/keep-the-run-alive.md). `stats_every`
    records per-layer max |activation| and gradient norms into a window of `window` entries;
    `sink(step, metrics)` or a TensorBoard SummaryWriter receives per-step numbers.
    Options: scheduler=, snapshot=True (keep the pre-step state so a NaN born inside
    optimizer.step() replays exactly), precision=, grad_clip=, skip_streak=, scale_floor=, rebuild=,
    distributed= (under torchrun: "auto", False, or {"timeout": seconds}; README, "Distributed runs"),
    spikes= (loss/gradient-norm spike detection: True, False or a dict of the `spikes` config keys),
    early_warnings= (sampled instability warnings: True, False or a dict of the `early_warnings` keys);
    both land in `watch.early_warnings` and in the crash bundle.
    """
    return Watch(model, optimizer, scaler, out=out, on_nonfinite=on_nonfinite, stats_every=stats_every,
                 window=window, check_every=check_every, sink=sink, **options)


# The callbacks set these themselves (they decide how gradients are reached and who is told).
_CALLBACK_OWNED = ("gradient_check", "notify", "inputs")


def callback_options(**options: Any) -> dict[str, Any]:
    """A framework callback's options for its Watch, checked when the callback is built so a
    typo fails at once rather than at the trainer's first step. Options the callback would
    otherwise read from the trainer (precision, grad_clip, scheduler, rebuild) are allowed and
    win over what the trainer says."""
    import inspect
    accepted = set(inspect.signature(Watch.__init__).parameters) - {"self", "model", "optimizer", "scaler"}
    unknown = sorted(set(options) - accepted)
    owned = sorted(set(options) & set(_CALLBACK_OWNED))
    if unknown or owned:
        raise TypeError(f"NanDoctorCallback: {', '.join(unknown + owned)} "
                        f"{'is' if len(unknown + owned) == 1 else 'are'} not an option here; "
                        f"accepted: {', '.join(sorted(accepted - set(_CALLBACK_OWNED)))}")
    return options


# ---- helpers ------------------------------------------------------------------------------------

def with_checked_closure(args: tuple, kwargs: dict, check: Callable[[Callable[[], Any]], None]) -> Optional[tuple[tuple, dict]]:
    """`optimizer.step(closure)`: the step's (args, kwargs) with the closure replaced by one that
    runs `check(closure)` after it (gradients final, weights not yet updated); None without a
    closure. An optimizer step pre-hook may return new arguments; torch then passes those to step()."""
    # torch passes the hook step()'s own args: (optimizer, closure?, ...).
    closure = kwargs.get("closure") if "closure" in kwargs else (args[1] if len(args) > 1 and callable(args[1]) else None)
    if closure is None or getattr(closure, "_nandoctor_checked", False):
        return None

    def checked_closure() -> Any:
        result = closure()
        check(closure)
        return result
    checked_closure._nandoctor_checked = True
    if "closure" in kwargs:
        return args, {**kwargs, "closure": checked_closure}
    return (args[0], checked_closure, *args[2:]), kwargs


def unwrap_optimizer(optimizer: Any) -> Optional[torch.optim.Optimizer]:
    """The torch optimizer inside a wrapper (Accelerate's AcceleratedOptimizer, Lightning's
    LightningOptimizer, DeepSpeed-style `.optimizer` chains): hooks belong on the torch one.
    AcceleratedOptimizer subclasses torch.optim.Optimizer without running its __init__ (it has no
    hook dictionaries), so a subclass that holds another optimizer is a wrapper too."""
    seen = 0
    while optimizer is not None and seen < 8:
        inner = _inner_optimizer(optimizer)
        if inner is None:
            break
        optimizer = inner
        seen += 1
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"nandoctor.watch: optimizer must be a torch.optim.Optimizer (or wrap one in "
                        f"`.optimizer`), got {type(optimizer).__name__}")
    return optimizer


def _inner_optimizer(optimizer: Any) -> Any:
    """What `optimizer` wraps (`.optimizer`, `._optimizer`), or None when it wraps nothing."""
    for name in ("optimizer", "_optimizer"):
        try:
            inner = getattr(optimizer, name, None)
        except Exception:  # noqa: BLE001 - a property that raises: not a wrapper attribute
            inner = None
        if inner is not None and inner is not optimizer and (isinstance(inner, torch.optim.Optimizer)
                                                             or _inner_optimizer(inner) is not None):
            return inner
    return None


def active_scaler(scaler: Any) -> Any:
    """A GradScaler that scales: `GradScaler(enabled=False)` (nanoGPT always builds one) is no scaler."""
    if scaler is None:
        return None
    is_enabled = getattr(scaler, "is_enabled", None)
    return scaler if not callable(is_enabled) or is_enabled() else None


def script_facts() -> Optional[dict[str, Any]]:
    """The training script this process runs (`python train.py ARGS`, or `nandoctor run`), so a
    replay can re-run it: its path, arguments and working directory. None in a notebook or REPL."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not os.path.isfile(path):
        return None
    from ..run.frames import is_user_file
    if not is_user_file(path):      # python -m pytest, ipykernel: not the user's training script
        return None
    spec = getattr(main, "__spec__", None)
    return {"path": os.path.abspath(path), "argv": [str(a) for a in sys.argv], "cwd": os.getcwd(),
            "module": spec.name if spec is not None and getattr(spec, "name", None) not in (None, "__main__") else None}


def plain_rebuild(model: torch.nn.Module) -> dict[str, Any]:
    rebuild: dict[str, Any] = {"kind": "plain", "model_class": f"{type(model).__module__}:{type(model).__qualname__}"}
    script = script_facts()
    if script is not None:
        rebuild["script"] = script
    return rebuild


def replay_hint(bundle: Path, rebuild: dict[str, Any]) -> str:
    """The exact command that replays this bundle, for messages."""
    kind = rebuild.get("kind")
    if kind == "huggingface":
        return f"Crash bundle: {bundle}; replay it with `nandoctor replay {bundle}`."
    if kind == "lightning":
        return f"Crash bundle: {bundle}; replay it with `nandoctor replay {bundle} --trust` (imports your LightningModule)."
    if rebuild.get("script"):
        return (f"Crash bundle: {bundle}; replay it with `nandoctor replay {bundle} --trust` (re-runs "
                f"{os.path.basename(rebuild['script']['path'])} up to this step with the bundle's state).")
    return (f"Crash bundle: {bundle}; replay it with `nandoctor replay {bundle} --model FILE` (a file defining "
            "build_model() and training_step(model, batch)).")


def forward_inputs(args: tuple, kwargs: dict) -> dict[str, Any]:
    """A model call's inputs as one micro-batch: {"args": [...], "kwargs": {...}}."""
    return {"args": list(args), "kwargs": dict(kwargs)}


def describe_nonfinite_rows(batch: Any, limit: int = 8) -> str:
    """Which tensors of a batch hold NaN/Inf, and in which rows (dim 0: the samples). Slow path."""
    parts = []
    for name, t in stats.iter_tensors(batch):
        if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
            continue
        bad = ~torch.isfinite(t.detach())
        if not bool(bad.any()):
            continue
        rows = stats.nonfinite_rows(t, limit=t.shape[0] if t.dim() else 0)
        parts.append(f"{batch_name(name)}: {int(bad.sum())} of {t.numel()} values"
                     + (f", sample rows {shown_list(rows, limit)}" if rows else ""))
    return "; ".join(parts) or "non-finite values"


def batch_name(path: str) -> str:
    """"['args'][0]" -> "args[0]": a micro-batch path as the model was called with it."""
    text = path.replace("['args']", "args").replace("['kwargs']", "kwargs")
    return text or "inputs"


_LIVE_WATCHES: "weakref.WeakSet[Watch]" = weakref.WeakSet()
_OTHER_OPTIMIZER_HOOK: list[Any] = []
_OWN_HOOK = "_nandoctor_reads_only"
# Up to this many per-tensor gradient norms, a CPU step sums them on the host (Watch._witness_values).
HOST_TOTAL_NORMS = 64


def weights_read_only(hook: Callable) -> Callable:
    """Marks one of nandoctor's own optimizer step hooks that reads the weights and never writes
    them, or that tells every watch of the model when it does (`Watch.weights_replaced`): a watch
    beside it still bounds its updates (watcher/update_bounds.py) instead of reading every one."""
    setattr(hook, _OWN_HOOK, True)
    return hook


def install_other_optimizer_hook() -> None:
    """One process-wide optimizer step pre-hook that hands every optimizer's step to the live
    watches (each copies the parameters that step is about to change and its own optimizer
    does not hold). Registered once and never removed: torch iterates its global hooks while
    calling them, and a watch is created (under `nandoctor run`) or closed (when it raises)
    inside that iteration, where adding or removing a hook fails ("OrderedDict mutated")."""
    if _OTHER_OPTIMIZER_HOOK:
        return
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    def pre_hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        for live in list(_LIVE_WATCHES):
            live._other_optimizer_pre_hook(optimizer, args, kwargs)
    # It copies weights, never writes them.
    _OTHER_OPTIMIZER_HOOK.append(register_optimizer_step_pre_hook(weights_read_only(pre_hook)))


def shown_list(values: list, limit: int = 8) -> str:
    return ", ".join(str(v) for v in values[:limit]) + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _running_stat_buffers(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(state_dict key, buffer) of every running statistic a training forward updates in place:
    BatchNorm / InstanceNorm / SyncBatchNorm with track_running_stats."""
    found = []
    for module_name, module in compiled.user_named_modules(model):
        if isinstance(module, torch.nn.modules.batchnorm._NormBase) and module.track_running_stats:
            for name, buf in module.named_buffers(recurse=False):
                if buf is not None:
                    found.append((f"{module_name}.{name}" if module_name else name, buf))
    return found


def _version_sum(params: list[torch.Tensor]) -> int:
    """Sum of the parameters' in-place version counters: it moves when an optimizer step (even
    one inside compiled code, which runs none of our hooks) updates them."""
    return sum(map(_VERSION, params))


def _infer_precision(model: torch.nn.Module, scaler: Any) -> str:
    if scaler is not None:
        return "16-mixed"
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    return {torch.float16: "16-true", torch.bfloat16: "bf16-true"}.get(dtype, "32-true")


def _scheduler_state(scheduler: Any) -> Any:
    if scheduler is None:
        return None
    import copy
    try:
        return copy.deepcopy(scheduler.state_dict())
    except Exception:  # noqa: BLE001 - a scheduler whose state cannot be copied is not restored
        return None


def _total(norms: Any) -> float:
    """The L2 total of per-tensor norms (a vector, GroupedNorms' tuple of scalars, or a total:
    0-dim, or already a float) as a float. A few are summed on the host: float64 squares of
    float32 norms cannot overflow, so the total is non-finite exactly when a norm is."""
    if type(norms) is float:
        return norms
    if type(norms) is tuple:
        if len(norms) <= HOST_TOTAL_NORMS:
            values = list(map(float, norms))
            return math.sqrt(sum(map(operator.mul, values, values)))
        norms = torch.stack(norms)
    elif norms.dim() == 0:
        return float(norms)
    elif norms.numel() <= HOST_TOTAL_NORMS and norms.device.type == "cpu":
        values = norms.tolist()
        return math.sqrt(sum(map(operator.mul, values, values)))
    return stats.total_norm(norms).item()


def _first_bad_micro_batch(check: str, capture: Optional[_Capture]) -> Optional[int]:
    """Which micro-batch's batch or loss held the NaN/Inf (slow path: only when writing a bundle)."""
    if capture is None:
        return None
    if check == "batch":
        return capture.first_bad_batch()
    if check == "loss" and len(capture.losses) == len(capture.batches):
        return next((i for i, loss in enumerate(capture.losses) if not bool(torch.isfinite(loss).all())), None)
    return None


def _blamed_text(found: dict[str, Any]) -> str:
    parts = []
    for s in found["dominant"][:8]:
        where = f"dataset index {s['index']}" if s["index"] is not None else f"row {s['row']}"
        parts.append(f"{where} ({found['statistic']} {_fmt(s['score'])})")
    return ", ".join(parts)


def _fmt(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Inf" if value > 0 else "-Inf") if math.isinf(value) else f"{value:.4g}"


def _emit(sink: Any, step: int, metrics: dict[str, float]) -> None:
    if hasattr(sink, "add_scalar"):
        for key, value in metrics.items():
            sink.add_scalar(f"nandoctor/{key}", value, step)
    else:
        sink(step, metrics)
