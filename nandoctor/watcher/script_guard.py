"""`nandoctor run`'s guard: finds the models, optimizers and scalers of an unmodified script and
watches each training step, with no line of the user's code changed.

What it hooks while the script runs, and why each is needed:
- torch's global optimizer step hooks: every `torch.optim` optimizer (and any subclass, wrapped
  by Accelerate or Lightning or not) announces each step before it touches a weight. The first
  step of an optimizer creates its `Watch`; later ones are that watch's one check per step.
- `torch.optim.Optimizer.__init__`: which optimizers exist, so that a backward pass with no
  optimizer anywhere marks a loop that updates its weights by hand.
- `torch.nn.Module.__call__`, only until each optimizer has its watch: the outermost module
  calls in training mode (the model; a loss module) and their inputs. After that, a forward
  pre-hook on each of those modules alone: no cost per submodule.
- `torch.autograd.backward` (what `loss.backward()` calls): the loss the loop backpropagates,
  and the end of each backward pass.
- `GradScaler.step` / `GradScaler.scale`: which scaler drives which optimizer, and the unscaled
  loss (a disabled scaler, as nanoGPT builds on CPU, is no scaler).
- `DataLoader.__iter__`: the batches each step drew, so that the re-run of a failing step draws
  the same ones (targets a loop hands to a loss function itself included).

On the first NaN/Inf the watch writes a crash bundle and the step becomes a no-op. A non-finite
batch is reported at once; a non-finite loss or gradient is re-run by the user's own loop
(watcher/rerun.py) and traced op by op; then `ScriptStop` ends the script.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import gc
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..run.compiled import compiling, uncompiled as compiled_uncompiled
from ..run.frames import is_user_file, location
from ..trace import ExperimentResult, LoopFacts, NonfiniteEvent, Phase, SourceLocation
from .compile_settings import WRAPPED_COMPILED_CALL
from .guard import Watch, active_scaler, plain_rebuild, weights_read_only, with_checked_closure
from ..run import stats
from ..run.stats import nonfinite_rows
from .guard import batch_name, shown_list
from .rerun import Rerun, RerunOutcome, TopCall, data_event
from .restart import RestartPlan, distributed_run, fingerprint_difference, weights_fingerprint
from .rewind import EXTRA_STEPS, LrRewind, Snapshot, new_result, restore, step_is_finite, take_snapshot


class ScriptStop(BaseException):
    """Raised inside the user's script to end it once the guard has what it needs. A
    BaseException, so the script's own `except Exception:` cannot swallow it."""


@dataclass
class Stop:
    """Why and where the guard stopped the script."""
    step: int
    check: str
    what: str
    watch: Watch
    bundle: Optional[Path] = None
    event: Optional[NonfiniteEvent] = None
    rerun: Optional[RerunOutcome] = None
    raised: Optional[str] = None          # the forward raised this exception on a non-finite batch
    # Under torchrun: who flagged what at the failing step's exchange (watcher/distributed.py's
    # verdict: origin_ranks, contaminated_ranks, rank, world_size); None in a single process.
    ranks: Optional[dict[str, Any]] = None
    # The watch's history as it stood when the re-run ended (experiments that re-train afterwards
    # add steps of their own to the live watch).
    history: Optional[list[dict[str, Any]]] = None

    @property
    def origin_elsewhere(self) -> bool:
        """This rank only received the NaN (through the gradient all-reduce or the weights)."""
        return bool(self.ranks and self.ranks.get("origin_ranks") and self.ranks["rank"] not in self.ranks["origin_ranks"])


@dataclass
class _Window:
    """Top-level training calls and backward losses since the last step boundary."""
    calls: list[TopCall] = field(default_factory=list)
    losses: list[torch.Tensor] = field(default_factory=list)
    rng: Optional[dict[str, Any]] = None
    # (id of the DataLoader, batch, the dataset indices of its samples or None) drawn this step
    batches: list[tuple[int, Any, Optional[list]]] = field(default_factory=list)
    # Storages of the model's outputs this step: a detached RNN state handed back in next step is
    # the model's own carried state, not data.
    outputs: set[int] = field(default_factory=set)
    # ids of the batches above that a top-level call of this step was seen taking
    used: set[int] = field(default_factory=set)
    fetched_ahead: int = 0      # batches at the front that the step before drew for this one

    def step_batches(self) -> list[tuple[int, Any, Optional[list]]]:
        """The batches this step trained on: a batch drawn after the last one a call took is the
        next step's, fetched ahead (Accelerate's DataLoaderShard draws one batch ahead to know
        which is the last)."""
        last_used = max((i for i, (_, batch, _) in enumerate(self.batches) if id(batch) in self.used), default=None)
        return self.batches if last_used is None else self.batches[:last_used + 1]


_INDICES = "_nandoctor_sample_indices"


class _ReplayableIterator:
    """A DataLoader's iterator, unchanged, except that the guard can hand the failing step's
    batches out once more for its re-run."""

    def __init__(self, inner: Any, loader: Any, guard: "ScriptGuard"):
        self._inner, self._loader, self._guard = inner, loader, guard

    def __iter__(self) -> "_ReplayableIterator":
        return self

    def __next__(self) -> Any:
        again = self._guard._batch_again(id(self._loader))
        if again is not None:
            return again
        batch = next(self._inner)
        # DataLoader iterators ask their sampler for index batches in order (ahead of time with
        # workers) and deliver batches in that same order: the oldest index batch is this one's.
        pending = self._inner.__dict__.get(_INDICES)
        indices = pending.popleft() if pending else None
        self._guard._window.batches.append((id(self._loader), batch, indices))
        return batch

    def __len__(self) -> int:
        return len(self._inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ScriptGuard:
    def __init__(self, out: str | Path = "nandoctor-bundles", stats_every: int = 50, check_every: int = 1,
                 window: int = 64, rerun: bool = True, distributed: Any = "auto", max_seconds: Optional[float] = None,
                 max_bundles: int = 1, snapshot_every: int = 100, snapshot_max_bytes: int = 2 << 30,
                 experiments_seconds: float = 60.0, spikes: Any = None, early_warnings: Any = None,
                 plan_rewinds: Optional[Callable[["ScriptGuard"], list[float]]] = None,
                 on_nonfinite: str = "stop", on_spike: str = "warn", rollback: Optional[dict[str, Any]] = None,
                 restart_over_bytes: Optional[int] = 64 << 20, restart: Optional[RestartPlan] = None,
                 on_experiment: Optional[Callable[[list[ExperimentResult]], None]] = None):
        self.out = Path(out)
        # --on-nonfinite skip|rollback, --on-spike: the watch's policies keep the script going
        # (watcher/keep_alive.py); "stop" is the trace-and-report path below.
        self.on_nonfinite, self.on_spike, self.rollback = on_nonfinite, on_spike, rollback
        self.keeps_alive = on_nonfinite in ("skip", "rollback") or on_spike != "warn"
        self._schedulers: dict[int, Any] = {}         # id(optimizer) -> the LR scheduler built for it
        self.options = dict(stats_every=stats_every, check_every=check_every, window=window, distributed=distributed,
                            spikes=spikes, early_warnings=early_warnings)
        self.do_rerun = rerun
        self.max_bundles = max_bundles
        # Rolling copies (the first and the latest, every `snapshot_every` steps; temporary files) from which a
        # confirming experiment re-trains through the user's own loop (watcher/rewind.py).
        self.snapshot_every = max(0, int(snapshot_every or 0))
        self.snapshot_max_bytes = snapshot_max_bytes
        self.snapshots: list[Snapshot] = []
        self.snapshot_note = ""
        self.plan_rewinds = plan_rewinds
        self.experiments_seconds = experiments_seconds
        self.experiments: list[ExperimentResult] = []
        self._rewinds: list[LrRewind] = []
        self._rewind: Optional[LrRewind] = None
        self._rewind_model: Optional[torch.nn.Module] = None
        # A state over `restart_over_bytes` keeps no step-0 file: its lr experiments run the script
        # again from its start (watcher/restart.py). `start_fingerprints`: id(optimizer) -> the
        # weights its step 0 started from, for that child to check; `restart_plan`: what the child
        # runs, once this run has failed. `restart` (in that child): the plan it runs.
        self.restart_over_bytes = restart_over_bytes
        self.start_fingerprints: dict[int, list[tuple[str, float]]] = {}
        self.restart_plan: Optional[RestartPlan] = None
        self.restart = restart
        self.on_experiment = on_experiment
        self._cuda_seed: Optional[int] = None
        # In that child: the watched run's failing step and history (for LrRewind.ended_early).
        self._failing_step = 0
        self._watched_history: Optional[list[dict[str, Any]]] = None
        self._experiments_began = 0.0
        self.watches: dict[int, Watch] = {}          # id(optimizer) -> its watch
        self.plain: Optional[Watch] = None            # the loop updates weights by hand
        self.stop: Optional[Stop] = None
        self.rerun: Optional[Rerun] = None
        self._optimizers: "weakref.WeakSet[torch.optim.Optimizer]" = weakref.WeakSet()
        self._holderless: set[int] = set()     # optimizers no live module holds the parameters of
        self._scalers: dict[int, Any] = {}            # id(optimizer) -> scaler that steps it
        self._scaled: "weakref.WeakSet[torch.Tensor]" = weakref.WeakSet()
        self._window = _Window()
        self._previous_window = _Window()
        self._known: dict[int, torch.nn.Module] = {}  # modules with a top-level pre-hook
        self._module_handles: list[Any] = []
        self._handles: list[Any] = []
        self._patches: list[tuple[Any, str, Any]] = []
        self._local = threading.local()
        self._discovering = False
        self._logged_by_call: Optional[torch.nn.Module] = None
        self._installed = False
        self._autocast: Optional[str] = None
        self.final_nonfinite: Optional[str] = None   # what a last look found when nothing fired
        self._batches_again: list[tuple[int, Any]] = []   # the failing step's batches, for its re-run
        self.failing_batches: list[tuple[int, Any, Optional[list]]] = []   # what the failing step drew
        self.failing_calls: list[TopCall] = []
        # The user's lines where the loop first did each thing (LoopFacts); "built:<id>" per optimizer.
        self.sites: dict[str, Optional[tuple[str, int, str]]] = {}
        self.clip_norm: Optional[float] = None
        self.framework: Optional[str] = None     # "huggingface" / "lightning": a trainer built the optimizer
        self.argv: list[str] = []
        self.phase_now = Phase.DATA            # where the loop is, for an exception's finding
        self.phase_at_error: Optional[Phase] = None
        # How the script ended, when it was not stopped by the guard: (UnfinishedStep reason, detail).
        self.script_end: Optional[tuple[str, str]] = None
        self.timed_out = False
        self._deadline = time.monotonic() + max_seconds if max_seconds else None

    # ---- install / uninstall -----------------------------------------------------------------------
    def install(self) -> None:
        self._frames_skipped = False
        self.argv = list(sys.argv[1:])       # the script's own arguments (set before install)
        import torch.optim.optimizer as optim
        from .guard import install_other_optimizer_hook
        install_other_optimizer_hook()          # now: the watches are made inside the hooks' loop
        self._handles.append(optim.register_optimizer_step_pre_hook(self._before_step))
        self._handles.append(optim.register_optimizer_step_post_hook(self._after_step))
        guard = self

        original_init = torch.optim.Optimizer.__init__

        def optimizer_init(opt: Any, *args: Any, **kwargs: Any) -> None:
            original_init(opt, *args, **kwargs)
            guard._optimizers.add(opt)
            guard.sites.setdefault(f"built:{id(opt)}", _user_caller())
            if guard.framework is None:
                guard.framework = _framework_of_caller()
        self._patch(torch.optim.Optimizer, "__init__", optimizer_init)

        original_backward = torch.autograd.backward

        def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            if compiling():      # inside a compiled train step: nothing of ours enters its graph
                return original_backward(tensors, *args, **kwargs)
            if "backward" not in guard.sites:
                guard.sites["backward"] = _user_caller()
            guard._before_backward(tensors)
            try:
                return original_backward(tensors, *args, **kwargs)
            finally:
                guard._after_backward()
        self._patch(torch.autograd, "backward", backward)

        # torch.autograd.backward is a function dynamo never traces (the user's own graph break);
        # ours in its place must not be a frame it tries to compile either. Marked once the script
        # compiles something (importing the compiler up front would cost every run seconds).
        original_compile = torch.compile

        @functools.wraps(original_compile)
        def compile_(*args: Any, **kwargs: Any) -> Any:
            if not guard._frames_skipped:
                guard._frames_skipped = True
                if torch.autograd.backward is backward:     # uninstall puts the original back
                    torch.autograd.backward = torch.compiler.disable(backward, recursive=False)
            return original_compile(*args, **kwargs)
        self._patch(torch, "compile", compile_)

        scaler_cls = torch.amp.GradScaler
        original_scale, original_step = scaler_cls.scale, scaler_cls.step

        def scale(scaler: Any, outputs: Any) -> Any:
            scaled = original_scale(scaler, outputs)
            if compiling():
                return scaled
            if active_scaler(scaler) is not None and isinstance(outputs, torch.Tensor):
                guard._note_loss(outputs)
                if isinstance(scaled, torch.Tensor):
                    guard._scaled.add(scaled)
            return scaled

        def step(scaler: Any, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            if not compiling():
                guard._note_scaler(scaler, optimizer)
            return original_step(scaler, optimizer, *args, **kwargs)
        self._patch(scaler_cls, "scale", scale)
        self._patch(scaler_cls, "step", step)

        scheduler_cls = torch.optim.lr_scheduler.LRScheduler
        original_scheduler_init = scheduler_cls.__init__

        def scheduler_init(scheduler: Any, optimizer: Any, *args: Any, **kwargs: Any) -> None:
            original_scheduler_init(scheduler, optimizer, *args, **kwargs)
            guard._schedulers.setdefault(id(optimizer), scheduler)
        if self.keeps_alive:      # a skip holds the scheduler; a rollback restores it
            self._patch(scheduler_cls, "__init__", scheduler_init)

        loader_cls = torch.utils.data.DataLoader
        original_iter = loader_cls.__iter__

        def loader_iter(loader: Any) -> Any:
            return _ReplayableIterator(original_iter(loader), loader, guard)
        self._patch(loader_cls, "__iter__", loader_iter)

        import torch.nn.utils.clip_grad as clip_module
        original_clip = clip_module.clip_grad_norm_

        def clip_grad_norm_(parameters: Any, max_norm: float, *args: Any, **kwargs: Any) -> Any:
            if "clip" not in guard.sites and not compiling():
                guard.sites["clip"] = _user_caller()
                guard.clip_norm = float(max_norm)
            return original_clip(parameters, max_norm, *args, **kwargs)
        self._patch(clip_module, "clip_grad_norm_", clip_grad_norm_)
        self._patch(torch.nn.utils, "clip_grad_norm_", clip_grad_norm_)

        from torch.utils.data.dataloader import _BaseDataLoaderIter
        original_next_index = _BaseDataLoaderIter._next_index

        def next_index(iterator: Any) -> Any:
            index = original_next_index(iterator)
            iterator.__dict__.setdefault(_INDICES, collections.deque()).append(
                list(index) if isinstance(index, (list, tuple)) else [index] if isinstance(index, int) else None)
            return index
        self._patch(_BaseDataLoaderIter, "_next_index", next_index)
        self._start_discovery()
        self._installed = True

    def _patch(self, owner: Any, name: str, replacement: Any) -> None:
        self._patches.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, replacement)

    def loop_facts(self, watch: Optional[Watch]) -> LoopFacts:
        """The lines of the user's loop that fixes can name, and its own settings."""
        def at(key: str) -> Optional[SourceLocation]:
            site = self.sites.get(key)
            return location(*site) if site else None
        calls = [c.site for c in self._window.calls + self._previous_window.calls if c.owns_parameters and c.site]
        model_call = location(*calls[0]) if calls else None
        optimizer = self.optimizer_of(watch)
        hand_written = watch is not None and optimizer is None
        return LoopFacts(update_site=_update_line(self.sites.get("backward")) if hand_written else None,model_call=model_call, backward=at("backward"), optimizer_step=at("step"),
                         optimizer_built=at(f"built:{id(optimizer)}") if optimizer is not None else None,
                         clip_norm=self.clip_norm, clip_site=at("clip"),
                         grad_scaler=watch is not None and watch.scaler is not None,
                         hand_written_update=hand_written,
                         argv=list(self.argv),
                         rewind_from=self.snapshots[0].step if self.snapshots else 0 if self.start_fingerprints else None)

    def optimizer_of(self, watch: Optional[Watch]) -> Optional[torch.optim.Optimizer]:
        """The optimizer that updates a watch's model: the watch's own, or, for a watch made when
        the script raised before any optimizer step (a first batch the loss rejects), an optimizer
        the script built over the model's parameters. Only a loop that built none updates its
        weights by hand."""
        if watch is None or watch.optimizer is not None:
            return watch.optimizer if watch is not None else None
        weights = {id(p) for p in watch.model.parameters()}
        return next((opt for opt in list(self._optimizers)
                     if any(id(p) in weights for group in opt.param_groups for p in group["params"])), None)

    def uninstall(self) -> None:
        if self.rerun is not None:
            self.rerun.close()
        self._stop_discovery()
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)
        self._patches.clear()
        for handle in self._handles + self._module_handles:
            handle.remove()
        self._handles.clear()
        self._module_handles.clear()
        for watch in self.all_watches():
            watch.close()
        for snapshot in self.snapshots:       # their files; `snapshots` still tells which steps had one
            snapshot.discard()
        self._installed = False

    def all_watches(self) -> list[Watch]:
        return list(self.watches.values()) + ([self.plain] if self.plain is not None else [])

    # ---- discovery: the outermost module calls ---------------------------------------------------
    def _start_discovery(self) -> None:
        if self._discovering:
            return
        original_call = torch.nn.Module.__call__
        guard = self

        def call(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            # Inside a compiled model: dynamo inlines this call; it must add nothing to the graph.
            if compiling() or id(module) in guard._known:
                return original_call(module, *args, **kwargs)     # its own pre-hook reports it
            depth = guard._depth()
            if depth == 0 and module.training and torch.is_grad_enabled() and not _in_backward():
                guard.phase_now = Phase.FORWARD
                replaced = guard._log_call(module, args, kwargs)
                if replaced is not None:
                    args, kwargs = replaced
                if id(module) in guard._known:
                    # It became known during this call (a replay found its model): its own hooks,
                    # registered just now, count the depth; this call is logged already.
                    guard._logged_by_call = module
                    return original_call(module, *args, **kwargs)
            if depth == 1 and guard._autocast is None and module.training and torch.is_grad_enabled():
                # A child of the model runs inside an autocast that the model's forward applies
                # itself (Accelerate's and the Trainer's `model.forward = autocast(forward)`).
                guard._note_autocast()
            guard._local.depth = depth + 1
            try:
                return original_call(module, *args, **kwargs)
            finally:
                guard._local.depth = depth
        self._discovery_patch = (torch.nn.Module, "__call__", torch.nn.Module.__dict__["__call__"])
        torch.nn.Module.__call__ = call
        self._discovering = True

    def _stop_discovery(self) -> None:
        if self._discovering:
            owner, name, original = self._discovery_patch
            setattr(owner, name, original)
            self._discovering = False

    def _depth(self) -> int:
        return getattr(self._local, "depth", 0)

    def _know(self, module: torch.nn.Module) -> None:
        """From now on this module's own hooks report its top-level calls (discovery can end)."""
        if id(module) in self._known:
            return
        self._known[id(module)] = module
        if module.__dict__.get("_compiled_call_impl") is not None:
            self._module_handles.append(_CompiledCallHooks(module, self._top_pre_hook, self._top_post_hook))
            return
        self._module_handles.append(module.register_forward_pre_hook(self._top_pre_hook, with_kwargs=True))
        self._module_handles.append(module.register_forward_hook(self._top_post_hook, always_call=True))

    def _top_pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Optional[tuple[tuple, dict]]:
        if compiling():
            return None
        depth = self._depth()
        self._local.depth = depth + 1
        if self._logged_by_call is module:
            self._logged_by_call = None
            return None
        if depth != 0 or not module.training or not torch.is_grad_enabled() or _in_backward():
            return None
        self.phase_now = Phase.FORWARD
        return self._log_call(module, args, kwargs)

    def _top_post_hook(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if compiling():
            return
        self._local.depth = max(0, self._depth() - 1)
        if self._depth() == 0:
            self.phase_now = Phase.LOSS
            if output is not None and not self._tracing():
                self._window.outputs.update(_storages(output))
            if self.rerun is not None:
                self.rerun.on_top_return(module)

    def _log_call(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Optional[tuple[tuple, dict]]:
        if stats.in_functorch_transform():
            # functional_call under torch.func.vmap/grad: its inputs are per-sample views that cannot
            # leave the transform. The call still names the model (its optimizer's watch attaches);
            # the gradients the transform leaves are checked at optimizer.step() as usual.
            self._window.calls.append(TopCall(module=module, args=(), kwargs={},
                                              owns_parameters=any(True for _ in module.parameters()),
                                              site=_user_caller()))
            return None
        replaced = None
        if self.rerun is not None and self.rerun.state != "done":
            replaced = self.rerun.on_top_call(module, args, kwargs)
            if replaced is not None:
                args, kwargs = replaced
        window = self._window
        taken_now = None        # the watches' step captures share it (one capture_rng per step)
        if window.rng is None:
            from .bundle_writer import capture_rng
            window.rng = taken_now = capture_rng()
            self._note_autocast()
        owns = any(True for _ in module.parameters())
        if owns and not self._tracing():
            self._claim_batches(args, kwargs)
        carried = self._previous_window.outputs | window.outputs
        site = _user_caller()
        matched = self.rerun.matched_call if replaced is not None else None
        if matched is not None and matched.site is None:
            matched.site = site         # a bundle's call (replay): the line that makes it in this run
        window.calls.append(TopCall(module=module, args=args, kwargs=kwargs, owns_parameters=owns,
                                    site=site, holder=_holder(module) if self._discovering else None,
                                    name=_called_name(module) if self._discovering else None,
                                    carried=_carried_paths(args, kwargs, carried) if carried else frozenset()))
        if not self._tracing():       # the watches' own reductions must not enter the traced re-run
            for watch in self.all_watches():
                if owns and _same_module(watch.model, module):
                    watch.begin_micro_batch(_forward_inputs(args, kwargs), rng=taken_now)
        return replaced

    def _claim_batches(self, args: tuple, kwargs: dict) -> None:
        """Mark the DataLoader batch this model call takes as this step's; one drawn during the
        step before (a loader that fetches ahead) moves into this step."""
        taken = set(_storages((args, kwargs)))
        if not taken:
            return
        window, previous = self._window, self._previous_window
        for entry in list(window.batches):
            if id(entry[1]) not in window.used and taken & set(_storages(entry[1])):
                window.used.add(id(entry[1]))
                return
        for i, entry in enumerate(previous.batches):
            if id(entry[1]) not in previous.used and taken & set(_storages(entry[1])):
                del previous.batches[i]
                window.batches.insert(window.fetched_ahead, entry)     # drawn before this step's own
                window.fetched_ahead += 1
                window.used.add(id(entry[1]))
                return

    def _tracing(self) -> bool:
        return self.rerun is not None and self.rerun.state == "tracing"

    def _note_autocast(self) -> None:
        from ..run.precision import autocast_precision
        self._autocast = autocast_precision() or self._autocast

    # ---- losses and backward passes --------------------------------------------------------------
    def _note_loss(self, loss: torch.Tensor) -> None:
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
            return
        self._window.losses.append(loss.detach())
        if self._tracing():
            return
        for watch in self.all_watches():
            if watch._capture is not None:
                watch.loss(loss)

    def _before_backward(self, tensors: Any) -> None:
        loss = tensors if isinstance(tensors, torch.Tensor) else (
            tensors[0] if isinstance(tensors, (list, tuple)) and len(tensors) == 1 else None)
        self.phase_now = Phase.BACKWARD
        if isinstance(loss, torch.Tensor) and loss not in self._scaled:
            self._note_loss(loss)
        if self.rerun is not None:
            self.rerun.on_backward(loss)

    def _after_backward(self) -> None:
        self.phase_now = Phase.OPTIMIZER
        if self.rerun is not None:
            self.rerun.after_backward()
        if self.watches:
            return            # steps end at optimizer steps
        if self.plain is None:
            if self._has_optimizer_with_gradients():
                return        # gradient accumulation before an optimizer's first step
            model = self._model_for(None)
            if model is None:
                return
            self.plain = self._new_watch(model, None)
            self._replay_window_into(self.plain)
            self._stop_discovery()
        if self.rerun is not None and self.rerun.state == "tracing":
            self._finish_rerun()
            raise ScriptStop()
        if self.rerun is not None and self.rerun.state == "armed":
            self.plain._drop_gradients()      # keep the weights the failing step used until the re-run
            self._step_boundary()
            return
        self.plain.end_backward_step()
        self._step_boundary()
        self._maybe_stop()
        self._check_deadline()

    @staticmethod
    def _has_gradients(optimizer: torch.optim.Optimizer) -> bool:
        return any(p.grad is not None for g in optimizer.param_groups for p in g["params"])

    def _has_optimizer_with_gradients(self) -> bool:
        return any(p.grad is not None for opt in list(self._optimizers) for g in opt.param_groups for p in g["params"])

    # ---- optimizer steps ---------------------------------------------------------------------------
    def _note_scaler(self, scaler: Any, optimizer: Any) -> None:
        scaler = active_scaler(scaler)
        if scaler is None:
            return
        from .guard import unwrap_optimizer
        opt = unwrap_optimizer(optimizer)
        self._scalers[id(opt)] = scaler
        watch = self.watches.get(id(opt))
        if watch is not None:
            watch.attach_scaler(scaler)

    # The guard's global step hooks read the weights; their one write (an lr experiment's rewind,
    # _next_rewind) tells the watches. Unmarked, every watch read its weights after every update.
    @weights_read_only
    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Optional[tuple]:
        # `optimizer.step(closure)` (LBFGS, Lightning's automatic optimization) runs the forward and
        # backward inside the step: the check belongs after the closure, before the update.
        if compiling():
            return None
        calls_before = len(self._window.calls)
        wrapped = with_checked_closure(args, kwargs, lambda closure: self._at_closure_end(
            optimizer, closure, ran_forward=len(self._window.calls) > calls_before))
        if wrapped is not None:
            return wrapped
        self._at_step(optimizer)
        return None

    def _at_closure_end(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any],
                        ran_forward: bool = True) -> None:
        """The step's closure ran. When that fired, re-run the step right here: the closure is
        the step's own forward and backward, and an optimizer that takes one (LBFGS) calls it
        several times anyway; the loop need not come round again. A closure that called no
        model (Lightning's manual optimization hands the step an empty one: the forward and
        backward ran before) is no re-run: the loop's next iteration is."""
        self._at_step(optimizer)
        if self.rerun is not None and self.rerun.state == "armed" and ran_forward:
            self.rerun.begin()
            closure()
            self._finish_rerun()
            self._after_rerun(optimizer)

    def _at_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.phase_now = Phase.OPTIMIZER
        if "step" not in self.sites:
            self.sites["step"] = _user_caller()
        if self._rewind is not None:
            self._rewind_step(optimizer)
            return
        if self.rerun is not None and self.rerun.state == "tracing":
            self._finish_rerun()
            self._after_rerun(optimizer)
            return
        watch = self.watches.get(id(optimizer))
        if watch is None:
            model = self._model_for(optimizer)
            if model is None:
                return       # no training forward seen yet: nothing to attribute this step to
            watch = self.watches[id(optimizer)] = self._new_watch(model, optimizer)
            if id(optimizer) in self._scalers:
                watch.attach_scaler(self._scalers[id(optimizer)])
            self._replay_window_into(watch)
            if not self._needs_discovery():
                self._stop_discovery()
            if self.restart is not None and len(self.watches) - 1 == self.restart.watch_index:
                self._begin_restart(watch)
                return
        if self.rerun is not None and self.rerun.state == "armed":
            watch._drop_gradients()       # keep the weights the failing step used until the re-run
            return
        watch.check_gradients()
        self._maybe_stop()
        self._maybe_snapshot(watch)

    @weights_read_only
    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if compiling():
            return
        if self._rewind is not None:
            self._rewind_stepped(optimizer)
        if id(optimizer) in self.watches:
            self._step_boundary()
            self._check_deadline()
            if (self.rerun is not None and self.rerun.state == "armed"
                    and not any(call.owns_parameters for call in self.rerun.calls)):
                # The failing step called no module (its forward is a method the loop calls
                # directly): no call can start the re-run, so it starts where the next step's
                # ops begin, right after this skipped update.
                self.rerun.begin()

    # ---- confirming experiments in the user's loop (watcher/rewind.py) ----------------------------------
    def _maybe_snapshot(self, watch: Watch) -> None:
        if not self.snapshot_every or watch.optimizer is None or self.stop is not None:
            return
        step = watch.step_index
        if step % self.snapshot_every:
            return
        restartable = step == 0 and self.restart_over_bytes is not None and not distributed_run()
        limit = min(self.snapshot_max_bytes, self.restart_over_bytes) if restartable else self.snapshot_max_bytes
        snapshot = take_snapshot(step, watch.model, watch.optimizer, max_bytes=limit)
        if not snapshot.saved and snapshot.nbytes <= self.snapshot_max_bytes:
            if self._keep_start_fingerprint(watch):
                return
            snapshot = take_snapshot(step, watch.model, watch.optimizer, max_bytes=self.snapshot_max_bytes)
        if not snapshot.saved:
            self.snapshot_every = 0
            self.snapshot_note = (f"the weights and optimizer state take {snapshot.nbytes / 2**20:.0f} MiB, over the "
                                  "snapshot limit: no rolling snapshot, so no lr experiment")
            return
        # Keep the first copy (before any divergence) and the latest.
        for dropped in self.snapshots[1:]:
            dropped.discard()
        self.snapshots = self.snapshots[:1] + [snapshot] if self.snapshots else [snapshot]

    def _keep_start_fingerprint(self, watch: Watch) -> bool:
        """Step 0's state is over the restart threshold: no file; what a run of the script from its
        start must reproduce instead (watcher/restart.py). False when the weights cannot be read so
        (the step-0 file is written after all)."""
        try:
            self.start_fingerprints[id(watch.optimizer)] = weights_fingerprint(watch.model)
        except Exception:  # noqa: BLE001 - parameters a strided view cannot read (meta, tensor subclasses)
            return False
        if torch.cuda.is_initialized():
            self._cuda_seed = torch.cuda.initial_seed()
        return True

    def _after_rerun(self, optimizer: torch.optim.Optimizer) -> None:
        """The traced re-run is done: re-train from a snapshot with lower learning rates when the
        diagnosis asks for it (and a snapshot from before the failing step exists, or the script can
        run again from its start); else stop."""
        stop = self.stop
        if stop is not None:
            stop.history = list(stop.watch.history)
        earlier = [s for s in self.snapshots if stop is not None and s.step < stop.step]
        watch = stop.watch if stop is not None else None
        if watch is None or watch.optimizer is None or self.plan_rewinds is None:
            raise ScriptStop()
        fingerprint = self.start_fingerprints.get(id(watch.optimizer))
        if not earlier and fingerprint is None:
            raise ScriptStop()
        scales = self.plan_rewinds(self)
        if not scales:
            raise ScriptStop()
        lr = watch.optimizer.param_groups[0].get("lr")
        lr = float(lr) if isinstance(lr, (int, float)) else None
        if not earlier:
            # The child runs after this script has stopped (watcher/script.py), from its start.
            self.restart_plan = RestartPlan(
                scales=list(scales), until=stop.step + EXTRA_STEPS, failing_step=stop.step, lr=lr,
                precision=watch.precision, watch_index=list(self.watches).index(id(watch.optimizer)),
                fingerprint=fingerprint, cuda_seed=self._cuda_seed,
                history=[{"step": h["step"], "loss": h.get("loss")} for h in stop.history if "step" in h])
            raise ScriptStop()
        start = earlier[0] if len(earlier) == 1 or earlier[-1].step > stop.step - 3 else earlier[-1]
        self._rewinds = [LrRewind(scale, start.step, stop.step + EXTRA_STEPS,
                                  new_result(scale, lr, start.step, stop.step + EXTRA_STEPS, watch.precision))
                         for scale in scales]
        self._rewind_snapshot = start
        self._rewind_model = watch.model
        self._experiments_began = time.perf_counter()
        self._next_rewind(watch.optimizer)

    def _begin_restart(self, watch: Watch) -> None:
        """In the child that runs the script again from its start, at its first step: check that it
        starts where the watched run started, keep that state, and run the plan's first experiment
        on this very step (its gradients are the ones step 0 computed from that state)."""
        plan = self.restart
        self.restart = None
        rewinds = [LrRewind(scale, 0, plan.until, new_result(scale, plan.lr, 0, plan.until, plan.precision,
                                                             restarted=True)) for scale in plan.scales]
        differs = fingerprint_difference(plan.fingerprint, weights_fingerprint(watch.model))
        if differs is not None:
            note = (f"the script's initial weights differ when it runs again ({differs}): it seeds its generators "
                    "from something that changes between runs (the time, the process id, ...); no lr experiment "
                    "from its start")
            self.experiments.extend(r.finish("skipped", note=note) for r in rewinds)
            raise ScriptStop()
        self._rewind_snapshot = take_snapshot(0, watch.model, watch.optimizer)
        self._rewind_model = watch.model
        self._rewinds = rewinds
        self._experiments_began = time.perf_counter()
        # What is left of the budget once the script is back at step 0 (the parent kills at the deadline).
        self.experiments_seconds = max(0.0, plan.deadline - time.time())
        self._failing_step, self._watched_history = plan.failing_step, plan.history
        self._rewind = self._rewinds.pop(0)
        self._rewind.begin()
        self._rewind_step(watch.optimizer)

    def _next_rewind(self, optimizer: torch.optim.Optimizer) -> None:
        if self.on_experiment is not None:
            self.on_experiment(self.experiments)
        if not self._rewinds or time.perf_counter() - self._experiments_began > self.experiments_seconds:
            for pending in self._rewinds:
                self.experiments.append(pending.finish("skipped", note="the experiments' time budget ran out"))
            self._rewinds, self._rewind = [], None
            raise ScriptStop()
        self._rewind = self._rewinds.pop(0)
        restore(self._rewind_snapshot, self._rewind_model, optimizer)
        for watch in self.all_watches():
            if watch.model is self._rewind_model:
                watch.weights_replaced()
        self._rewind.begin()

    def _rewind_step(self, optimizer: torch.optim.Optimizer) -> None:
        rewind = self._rewind
        if not step_is_finite(self._window.losses, [p for g in optimizer.param_groups for p in g["params"]]):
            self.experiments.append(rewind.finish("nonfinite", first_bad=rewind.step))
            self._next_rewind(optimizer)
            for group in optimizer.param_groups:      # this step's gradients belong to the last experiment
                for p in group["params"]:
                    p.grad = None
            return
        if self._window.losses:   # the experiment's own loss, against the watched run's (rewind.ended_early)
            rewind.losses[rewind.step] = float(torch.stack([l.detach().float().reshape(()) for l in
                                                            self._window.losses]).mean())
        rewind.scale_lr(optimizer)

    def _rewind_stepped(self, optimizer: torch.optim.Optimizer) -> None:
        rewind = self._rewind
        rewind.restore_lr(optimizer)
        rewind.step += 1
        if rewind.step > rewind.until:
            self.experiments.append(rewind.finish("finite"))
            self._next_rewind(optimizer)

    def _check_deadline(self) -> None:
        if self._deadline is not None and self.stop is None and time.monotonic() > self._deadline:
            self.timed_out = True
            raise ScriptStop()

    def _step_boundary(self) -> None:
        self.phase_now = Phase.DATA
        self._previous_window = self._window
        self._window = _Window()

    def _needs_discovery(self) -> bool:
        return any(id(opt) not in self.watches for opt in list(self._optimizers)
                   if any(p.grad is not None for g in opt.param_groups for p in g["params"]))

    def _model_for(self, optimizer: Optional[torch.optim.Optimizer]) -> Optional[torch.nn.Module]:
        """The module whose training forward this optimizer's step (or a hand-written update)
        follows: the outermost called module owning its parameters (or, when the loop calls
        several, the module that holds them all)."""
        modules: list[torch.nn.Module] = []
        for call in self._window.calls + self._previous_window.calls:
            if call.owns_parameters and not any(call.module is m for m in modules):
                modules.append(call.module)
        if optimizer is not None:
            wanted = {id(p) for g in optimizer.param_groups for p in g["params"]}
        else:
            wanted = {id(p) for m in modules for p in m.parameters() if p.grad is not None}
        if not wanted:
            return None
        scored = [(len(wanted & {id(p) for p in m.parameters()}), m) for m in modules]
        scored = [(n, m) for n, m in scored if n]
        if not scored:
            # A step whose gradients came from no module call: the loop calls the forward as a
            # method (`self.forward(x)` inside the module, Forward-Forward's per-layer training).
            if optimizer is None or id(optimizer) in self._holderless or not self._has_gradients(optimizer):
                return None
            holder = _module_holding(wanted)
            if holder is None:      # bare Parameters: the search walks the whole heap, so only once
                self._holderless.add(id(optimizer))
            return holder
        best_count, best = max(scored, key=lambda s: s[0])
        if best_count < len(wanted) and len(scored) > 1:
            parent = _common_parent([m for _, m in scored])
            if parent is not None:
                best = parent
        else:
            # A LightningModule's training_step calls `self.net(x)`: the module the user wrote and
            # names things after is the one that holds it (with no parameters of its own).
            holder = next((c.holder for c in self._window.calls + self._previous_window.calls
                           if c.module is best and c.holder is not None), None)
            if holder is not None and {id(p) for p in holder.parameters()} == {id(p) for p in best.parameters()}:
                best = holder
        for call in self._window.calls + self._previous_window.calls:
            self._know(call.module)
        return best

    def _new_watch(self, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> Watch:
        rebuild = plain_rebuild(model)
        rebuild["kind"] = "script" if "script" in rebuild else "plain"
        rebuild["model_name"], rebuild["qualified_modules"] = self._script_name(model)
        policy = self.on_nonfinite if self.on_nonfinite in ("skip", "rollback") else "skip"
        extra: dict[str, Any] = {}
        if self.keeps_alive:
            extra = dict(on_spike=self.on_spike, rollback=self.rollback,
                         scheduler=self._schedulers.get(id(optimizer)) if optimizer is not None else None)
        watch = Watch(model, optimizer, None, out=self.out, on_nonfinite=policy, gradient_check="manual",
                      inputs="manual", notify=self._on_fire, warn=False, rebuild=rebuild, batch_check=False,
                      precision=self._autocast, max_bundles=self.max_bundles, **extra, **self.options)
        watch.batch_provider = lambda capture: self._bundle_batches(watch, capture)
        watch.keep_alive.enabled = self.keeps_alive
        if policy != self.on_nonfinite:
            # "skip" above is the stop path's own no-op step; it must not keep a NaN run going.
            watch.keep_alive.on_nonfinite = "raise"
        watch.keep_alive.aside = self._aside
        watch.keep_alive.loss_source = lambda capture: self._loss_source(watch, capture)
        return watch

    def _script_name(self, model: torch.nn.Module) -> tuple[str, bool]:
        """(what the script calls the watched model, whether module paths start with it). The
        name is the variable or attribute the script calls it through (`netD`, `self.discriminator`
        -> `discriminator`), else its class's; paths are qualified with it when the loop also
        calls another model with parameters of its own (a GAN's generator and discriminator), so
        that `main.2` says whose."""
        calls = self._window.calls + self._previous_window.calls
        name = next((c.name for c in calls if c.module is model and c.name), None)
        others = any(c.owns_parameters and c.module is not None and not _contains(model, c.module)
                     and not _contains(c.module, model) for c in calls)
        return name or type(compiled_uncompiled(model)).__name__, others

    def _bundle_batches(self, watch: Watch, capture: Any) -> list[Any]:
        """What a script bundle stores of the failing step: every top-level call's inputs (the
        tensors that need no gradient; those are the replay's own) and every DataLoader batch,
        in order, so a replay of the script can feed its first iteration exactly these."""
        window = self._window if capture is watch._capture else self._previous_window
        entries: list[Any] = []
        for call in window.calls:
            args, kwargs = _data_only(call.args), _data_only(call.kwargs)
            watched = call.module is not None and _contains(watch.model, call.module)
            entries.append({"call": {"model": call.owns_parameters, "watched": watched, "args": list(args),
                                     "kwargs": kwargs}})
        for _, batch, indices in window.step_batches():
            entries.append({"loader": batch, "indices": indices})
        return entries

    def _replay_window_into(self, watch: Watch) -> None:
        """The first step ran before its watch existed: give it that step's calls and losses."""
        calls = [c for c in self._window.calls if c.owns_parameters and _same_module(watch.model, c.module)]
        for call in calls:
            watch.begin_micro_batch(_forward_inputs(call.args, call.kwargs))
        if watch._capture is not None:
            if self._window.rng is not None:
                watch._capture.rng = self._window.rng
            for loss in self._window.losses:
                watch.loss(loss)

    def _loss_source(self, watch: Watch, capture: Any) -> Optional[tuple[Callable[..., torch.Tensor], list[Any]]]:
        """The step's loss per sample, from the loss module it called (`nn.CrossEntropyLoss()(out,
        target)`): the module again with reduction='none' on the model's re-run output. None when
        the step called no such module (a functional loss, a loss inside the model)."""
        window = self._window if capture is watch._capture else self._previous_window
        loss_call = next((c for c in window.calls if not c.owns_parameters and c.module is not None
                          and isinstance(getattr(c.module, "reduction", None), str) and len(c.args) >= 2
                          and isinstance(c.args[1], torch.Tensor)), None)
        if loss_call is None or len(capture.calls) != 1:
            return None
        module, target = loss_call.module, loss_call.args[1]

        def per_sample(model: torch.nn.Module, pair: Any) -> torch.Tensor:
            call, rows = pair
            output = model(*call.get("args", []), **call.get("kwargs", {}))
            saved = module.reduction
            module.reduction = "none"
            try:
                return module(output, rows)
            finally:
                module.reduction = saved
        per_sample.method = f"{type(module).__name__}(reduction='none')"
        return per_sample, [(capture.calls[0], target)]

    @contextlib.contextmanager
    def _aside(self) -> Any:
        """The watch's per-sample re-run calls the model: none of it belongs to the step's window."""
        calls, losses, batches = list(self._window.calls), list(self._window.losses), list(self._window.batches)
        try:
            yield
        finally:
            self._window.calls[:], self._window.losses[:], self._window.batches[:] = calls, losses, batches

    # ---- firing -----------------------------------------------------------------------------------
    def _on_fire(self, event: dict[str, Any]) -> None:
        if self.stop is not None:
            return
        watch = next((w for w in self.all_watches() if w.events and w.events[-1] is event), None)
        if watch is None:
            return
        capture = watch.fired_capture
        if watch.keep_alive.enabled and watch.keep_alive.can_continue(event["check"], event["step"]):
            return          # the policy skips the step or rolls back; the script goes on
        watch.keep_alive.enabled = False      # from here on the step is skipped, traced and reported
        self.stop = Stop(step=event["step"], check=event["check"], what=event["what"], watch=watch,
                         bundle=Path(event["bundle"]) if event.get("bundle") else None, raised=event.get("raised"))
        self.failing_batches = list(self._window.step_batches())
        self.failing_calls = list(self._window.calls)
        if watch.distributed is not None and getattr(watch.distributed, "table", None) is not None:
            try:
                self.stop.ranks = watch.distributed.verdict()
            except Exception:  # noqa: BLE001 - a verdict that cannot be read leaves the rank unnamed
                self.stop.ranks = None
        if event["check"] == "batch" and capture is not None and capture.batches:
            index = capture.first_bad_batch() or 0
            drawn = list(self._window.step_batches())
            self.stop.event = data_event(watch.precision, event["step"], capture.batches[index],
                                         lambda t, rows: _indices_in(drawn, t, rows))
            calls = [c for c in self._window.calls if c.owns_parameters and c.site is not None]
            if len(calls) > index:
                self.stop.event.source = self.stop.event.user_source = location(*calls[index].site)
            return
        if event["check"] in ("loss", "gradients") and self.do_rerun and capture is not None:
            self.rerun = Rerun(watch.model, watch.precision, event["step"], event["check"],
                               capture.rng, list(self._window.calls), watch.params(),
                               model_name=watch.rebuild.get("model_name"),
                               qualified_modules=bool(watch.rebuild.get("qualified_modules")))
            self._batches_again = list(self._window.step_batches())
            self.rerun.batches = list(self._window.step_batches())

    def _batch_again(self, loader: int) -> Any:
        """While a re-run is armed: the failing step's next batch from this DataLoader (or from the
        only DataLoader that step drew from: a loop may build a new DataLoader every epoch)."""
        if not self._batches_again or (self.rerun is not None and self.rerun.state == "done"):
            return None
        loaders = {entry[0] for entry in self._batches_again}
        for i, (owner, batch, _) in enumerate(self._batches_again):
            if owner == loader or len(loaders) == 1:
                del self._batches_again[i]
                return batch
        return None



    def on_script_error(self, error: BaseException) -> None:
        """The script raised: when the step's batch held NaN/Inf, that is the finding (the
        exception is the symptom, BCE's range check on a NaN row)."""
        if self.stop is not None:
            return
        try:
            if not self.all_watches():
                # It raised before the first optimizer step (a first batch holding NaN): a watch
                # for the model that was called, fed this step's calls, judges the batch.
                model = self._model_for(None) or next((c.module for c in self._window.calls if c.owns_parameters), None)
                if model is None:
                    return
                self.plain = self._new_watch(model, None)
                self._replay_window_into(self.plain)
            for watch in self.all_watches():
                if watch.raised_on_nonfinite_batch(error):
                    return
        except Exception:  # noqa: BLE001 - a failing check must not hide the script's own exception
            return

    def _maybe_stop(self) -> None:
        """After a firing: stop now unless a re-run of the step is on its way."""
        if self.stop is not None and (self.rerun is None or self.rerun.state == "done"):
            raise ScriptStop()

    def _finish_rerun(self, unfinished: Optional[tuple[str, str]] = None) -> None:
        if self.rerun is None:
            return
        outcome = self.rerun.finish(unfinished)
        if self.stop is not None:
            self.stop.rerun = outcome
            if outcome.event is not None:
                self.stop.event = outcome.event
                if outcome.entered is not None:
                    self._name_entered_input(outcome)
                samples = _indices_in(self.rerun.batches, outcome.entered, outcome.entered_rows)
                if samples:
                    outcome.event.detail += f"; dataset indices {shown_list(samples)}"

    def _check_unstepped_step(self) -> None:
        """The script ended (its own NaN check raised or exited, say) after a backward pass whose
        optimizer step never came: that step is checked as its step hook would have checked it.
        The weights are still the ones it used, so its bundle replays it."""
        try:
            if bool(torch.isfinite(torch.stack([l.detach().float().reshape(()) for l in self._window.losses])).all()):
                return         # a finite step the script left is not a step to report
            for watch in list(self.watches.values()):
                if self.stop is None and watch.optimizer is not None and any(
                        p.grad is not None for g in watch.optimizer.param_groups for p in g["params"]):
                    watch.check_gradients()
        except Exception:  # noqa: BLE001 - a failing check must not hide how the script ended
            return

    def _nonfinite_at_end(self) -> Optional[str]:
        """A last look when nothing fired (the promise that a non-finite run never passes, also
        when no watch could attach): the weights of every optimizer the script built, and the
        last losses it backpropagated."""
        bad = []
        for optimizer in list(self._optimizers):
            # max |x| per tensor from its max and min, grouped by shape (no |x| copy of each, a handful
            # of kernels): 30 ms for a GPT-2-small shape's weights, 87 ms as one abs().amax() per tensor
            params = [p.detach() for g in optimizer.param_groups for p in g["params"] if p.numel()]
            if params and not bool(torch.isfinite(stats.foreach_max_abs(params)).all()):
                bad.append(f"the weights of its {type(optimizer).__name__} hold NaN/Inf at the end")
        losses = self._window.losses + self._previous_window.losses
        if losses and not bool(torch.isfinite(torch.stack([l.float().reshape(()) for l in losses])).all()):
            bad.append("its last backpropagated loss is NaN/Inf")
        return "; ".join(bad) or None

    def _name_entered_input(self, outcome: RerunOutcome) -> None:
        """Data that entered the step non-finite, found inside the model (a `split` of its input):
        when it is (a view of) a tensor the loop handed a top-level call, name that input and
        place the finding at the user's call, where the data reached the model."""
        from ..run.stats import iter_tensors
        entered = outcome.entered
        base = entered._base if entered._base is not None else entered
        for call in self.rerun.calls if self.rerun is not None else []:
            for path, t in iter_tensors({"args": list(call.args), "kwargs": call.kwargs}):
                if t is entered or t is base or (t.data_ptr() == base.data_ptr() and t.numel() >= base.numel()):
                    event = outcome.event
                    op_line = event.user_source
                    event.tensor = f"{batch_name(path)} of the model call" if call.owns_parameters else batch_name(path)
                    if call.site is not None:
                        event.user_source = location(*call.site)
                        if event.source == op_line:
                            # The op ran at the user's own line (their forward's `x.split(...)`), not
                            # in a package: the values were born where they entered, at the call
                            # (the detail keeps the op's line). Left apart, reports show that line
                            # as library code.
                            event.source = event.user_source
                    rows = nonfinite_rows(t)
                    bad = int((~torch.isfinite(t.detach())).sum())
                    event.count = bad
                    event.detail = (f"{event.tensor}: {bad} of {t.numel()} values non-finite"
                                    + (f", sample rows {', '.join(map(str, rows[:8]))}" if rows else "")
                                    + " (already non-finite when the loop passed it in)"
                                    + (f"; first used by {event.op} at {op_line}" if op_line is not None else ""))
                    outcome.entered_rows, outcome.entered = rows, t
                    return

    def finish(self) -> None:
        """The script ended (or was stopped): close a re-run that never came, and experiments the
        loop did not run to their end."""
        if self.stop is None and self.script_end is not None and self._window.losses:
            self._check_unstepped_step()
        if self.stop is None:
            self.final_nonfinite = self._nonfinite_at_end()
        failing = self.stop.step if self.stop is not None else self._failing_step
        history = self.stop.history if self.stop is not None else self._watched_history
        for pending in ([self._rewind] if self._rewind is not None else []) + self._rewinds:
            self.experiments.append(pending.ended_early(failing, history))
        self._rewind, self._rewinds = None, []
        if self.rerun is not None and self.rerun.state == "armed" and self.stop is not None:
            self.stop.rerun = RerunOutcome(note="the script ended before the loop ran the failing step again")
        if self.rerun is not None and self.rerun.state == "tracing" and self.stop is not None:
            # The traced step never reached its end (a loop shape whose step ends elsewhere, an
            # exception, sys.exit): what was traced until the script ended is the diagnosis.
            self._finish_rerun(unfinished=self.script_end or ("script-ended", "the script ended"))
        if self.rerun is not None:
            self.rerun.close()
        for watch in self.all_watches():
            watch.close()


_USER_CODE: dict[Any, bool] = {}


class _CompiledCallHooks:
    """`module.compile()` (in place) compiles the module's whole call, its hooks included:
    there the guard's hooks are inert (they return at once while dynamo traces), so the guard
    would never see the model called again. It wraps the compiled call from outside instead,
    and registers no hook on the module (a new hook would recompile it)."""

    def __init__(self, module: torch.nn.Module, pre: Callable[..., Any], post: Callable[..., Any]):
        self.module, self.compiled = module, module.__dict__["_compiled_call_impl"]
        compiled = self.compiled

        def call(*args: Any, **kwargs: Any) -> Any:
            replaced = pre(module, args, kwargs)
            if replaced is not None:
                args, kwargs = replaced
            output = None
            try:
                output = compiled(*args, **kwargs)
                return output
            finally:
                post(module, args, output)
        setattr(call, WRAPPED_COMPILED_CALL, compiled)       # compile_settings() reads the settings through it
        module._compiled_call_impl = call

    def remove(self) -> None:
        if self.module.__dict__.get("_compiled_call_impl") is not None:
            self.module._compiled_call_impl = self.compiled


def _in_backward() -> bool:
    """A module called while autograd runs a backward pass: activation checkpointing recomputing
    its forward. It is no new step's forward, and its recomputation must see exactly the ops
    it saw the first time (non-reentrant checkpointing checks the saved tensors one by one)."""
    return torch._C._current_graph_task_id() != -1


def _user_caller(depth: int = 24) -> Optional[tuple[str, int, str]]:
    """(file, line, function) of the innermost frame of the user's own files calling this module
    (cheap enough for every top-level call: a short walk, file checks cached per code object)."""
    frame = sys._getframe(2)
    while frame is not None and depth:
        code = frame.f_code
        user = _USER_CODE.get(code)
        if user is None:
            user = _USER_CODE[code] = is_user_file(code.co_filename)
        if user:
            return code.co_filename, frame.f_lineno, code.co_name
        frame = frame.f_back
        depth -= 1
    return None


def _update_line(backward: Optional[tuple[str, int, str]], window: int = 40) -> Optional[SourceLocation]:
    """A loop with no optimizer updates its weights by hand right after its backward pass: the
    first line after `loss.backward()` that writes a parameter from its `.grad`
    (`p.data.add_(p.grad, alpha=-lr)`, `p -= lr * p.grad`). None when there is no such line."""
    if backward is None:
        return None
    import linecache
    path, line, function = backward
    for number in range(line + 1, line + 1 + window):
        text = linecache.getline(path, number)
        if ".grad" in text and any(op in text for op in ("add_(", "sub_(", "-=", "copy_(")):
            return location(path, number, function)
    return None


def _carried_paths(args: tuple, kwargs: dict, storages: set[int]) -> frozenset:
    from ..run.stats import iter_tensors
    return frozenset(path for path, t in iter_tensors({"args": list(args), "kwargs": kwargs})
                     if t.is_floating_point() and _storage_of(t) in storages)


def _storage_of(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):     # tensors without storage (fake, sparse)
        return -1


def _storages(output: Any, limit: int = 16) -> list[int]:
    from ..run.stats import iter_tensors
    return [ptr for ptr in (_storage_of(t) for _, t in list(iter_tensors(output))[:limit]) if ptr != -1]


def _indices_in(drawn: list[tuple[int, Any, Optional[list]]], tensor: Optional[torch.Tensor],
                rows: list[int]) -> Optional[list]:
    """The dataset indices of `rows` of a batch tensor the failing step drew from a DataLoader."""
    if tensor is None:
        return None
    from ..run.stats import iter_tensors
    for _, batch, indices in drawn:
        if not indices:
            continue
        for _, t in iter_tensors(batch):
            if t is tensor or (t.shape == tensor.shape and t.data_ptr() == tensor.data_ptr()):
                return [indices[r] for r in rows if r < len(indices)]
    return None


def _data_only(tree: Any) -> Any:
    """The leaves a re-run substitutes: tensors needing a gradient (a model output handed to a
    loss) are the re-run's own, so they are left out (None)."""
    from torch.utils._pytree import tree_map
    return tree_map(lambda x: None if isinstance(x, torch.Tensor) and x.requires_grad else x, tree)


def _same_module(model: torch.nn.Module, module: torch.nn.Module) -> bool:
    return module is model or any(module is m for m in model.children())


def _forward_inputs(args: tuple, kwargs: dict) -> dict[str, Any]:
    from .guard import forward_inputs
    return forward_inputs(args, kwargs)


def _module_holding(wanted: set[int]) -> Optional[torch.nn.Module]:
    """The smallest live module whose parameters include every id in `wanted`, found once among
    the garbage collector's objects: the model of an optimizer whose module was never called
    (so no call hook saw it). None when no single module holds them all."""
    best: Optional[torch.nn.Module] = None
    best_size = 0
    for obj in gc.get_objects():
        # type(), not isinstance(): isinstance reads `__class__`, which some library objects turn
        # into a property that warns (torch.distributed.reduce_op).
        if not issubclass(type(obj), torch.nn.Module):
            continue
        try:
            held = {id(p) for p in obj.parameters()}
        except Exception:  # a module whose parameters() misbehaves (half-built) is no model of ours
            continue
        if wanted <= held and (best is None or len(held) < best_size):
            best, best_size = obj, len(held)
    return best


def _common_parent(modules: list[torch.nn.Module]) -> Optional[torch.nn.Module]:
    """The module that holds all of `modules` as children (a LightningModule whose
    training_step calls its encoder and decoder directly). Found once, through the garbage
    collector's referrers; None when there is no single holder."""
    candidates: Optional[set[int]] = None
    objects: dict[int, torch.nn.Module] = {}
    for module in modules:
        holders = set()
        for ref in gc.get_referrers(module):
            if isinstance(ref, dict):
                for owner in gc.get_referrers(ref):
                    if isinstance(owner, dict):
                        for parent in gc.get_referrers(owner):
                            if isinstance(parent, torch.nn.Module) and any(c is module for c in parent.children()):
                                holders.add(id(parent))
                                objects[id(parent)] = parent
        candidates = holders if candidates is None else candidates & holders
    if not candidates:
        return None
    return objects[next(iter(candidates))]


_FRAMEWORKS = {"transformers": "huggingface", "lightning": "lightning", "pytorch_lightning": "lightning",
               "accelerate": "accelerate"}


def _framework_of_caller(depth: int = 24) -> Optional[str]:
    """Which trainer library constructed an optimizer (the first frame outside torch), if any:
    then the learning rate and eps are that trainer's settings, not a line of the user's."""
    frame = sys._getframe(2)
    while frame is not None and depth:
        module = frame.f_globals.get("__name__", "")
        top = module.split(".")[0]
        if top in _FRAMEWORKS:
            return _FRAMEWORKS[top]
        if top not in ("torch", "nandoctor") and is_user_file(frame.f_code.co_filename):
            return None
        frame = frame.f_back
        depth -= 1
    return None


def _contains(outer: torch.nn.Module, inner: torch.nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def _called_name(module: torch.nn.Module, depth: int = 24) -> Optional[str]:
    """What the user's code calls this module where it calls it: a variable of the calling function
    or of its file (`netD(x)`), or an attribute of the object whose method made the call
    (`self.discriminator(x)` -> `discriminator`). Discovery only: reads a frame's names once."""
    frame = sys._getframe(2)
    while frame is not None and depth:
        if is_user_file(frame.f_code.co_filename):
            for scope in (frame.f_locals, frame.f_globals):
                name = next((k for k, v in scope.items() if v is module and k != "self" and not k.startswith("__")), None)
                if name is not None:
                    return name
            owner = frame.f_locals.get("self")
            members = owner.__dict__.get("_modules") if isinstance(owner, torch.nn.Module) else getattr(owner, "__dict__", None)
            if isinstance(members, dict):
                return next((k for k, v in members.items() if v is module), None)
            return None
        frame = frame.f_back
        depth -= 1
    return None


def _holder(module: torch.nn.Module, depth: int = 24) -> Optional[torch.nn.Module]:
    """The module whose method made this call (`self.net(x)` inside a LightningModule's
    training_step), when it holds the called module as a child. Discovery only: reads a frame's
    locals once."""
    frame = sys._getframe(2)
    while frame is not None and depth:
        if is_user_file(frame.f_code.co_filename):
            owner = frame.f_locals.get("self")
            if isinstance(owner, torch.nn.Module) and any(c is module for c in owner.children()):
                return owner
            return None
        frame = frame.f_back
        depth -= 1
    return None


def phase_of(check: str) -> Phase:
    return {"batch": Phase.DATA, "loss": Phase.FORWARD, "gradients": Phase.BACKWARD,
            "parameters": Phase.OPTIMIZER}.get(check, Phase.BACKWARD)
