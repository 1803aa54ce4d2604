"""`nandoctor replay BUNDLE --trust` for a bundle of a training script: run the script again
and make its first training iteration the failing step.

The script builds its model, optimizer and data as it always does. At its first training forward
the guard finds the model the bundle holds (the module, or the module holding it, whose
state_dict has the bundle's keys), loads the bundle's weights (and, when it fits, the optimizer
state), puts every generator back where the failing step found it, and feeds that iteration the
failing step's inputs and DataLoader batches. The step is traced op by op as `nandoctor run`
traces it (watcher/rerun.py), then the script is stopped. Only with --trust: it runs the user's
code.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ..errors import InputError
from ..load.bundle import Bundle, decode_value
from ..load.script import TrainingScript
from ..run import compiled
from ..run.bundles.rebuild import _rng_restorer
from .rerun import Rerun, TopCall
from .guard import with_checked_closure
from .script import ScriptOutcome, execute_script
from .script_guard import ScriptGuard, Stop


class ReplayGuard(ScriptGuard):
    def __init__(self, found: Bundle, **options: Any):
        super().__init__(max_bundles=0, **options)
        self.found = found
        manifest = found.manifest
        self._state = found.model_state()
        self._keys = set(self._state)
        entries = found.micro_batches()
        calls = [e["call"] for e in entries if isinstance(e, dict) and isinstance(e.get("call"), dict)]
        # The replay is armed at the bundled model's first call: the step's calls of another model
        # before it (a GAN's generator, ahead of the discriminator whose step failed) are not its inputs.
        first = next((i for i, call in enumerate(calls) if call.get("watched")), 0)
        self._bundle_calls = [TopCall(module=None, args=tuple(call.get("args") or ()), kwargs=dict(call.get("kwargs") or {}),
                                      owns_parameters=bool(call.get("model")))
                              for call in calls[first:]]
        # The script's first DataLoader draws are the failing step's.
        self._batches_again = [(0, e["loader"], e.get("indices")) for e in entries
                               if isinstance(e, dict) and "loader" in e]
        self.failing_batches = list(self._batches_again)
        self._restore_rng = _rng_restorer(found)
        self.loaded = False
        self.load_notes: list[str] = []
        self.step = manifest.step

    def _log_call(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Optional[tuple[tuple, dict]]:
        if not self.loaded and module.training and torch.is_grad_enabled():
            model = self._bundled_model(module)
            if model is not None:
                self._arm(model)
        return super()._log_call(module, args, kwargs)

    def _bundled_model(self, module: torch.nn.Module) -> Optional[torch.nn.Module]:
        from .script_guard import _holder
        # The bundle's keys are the user's names (compiled.user_state_dict): a script that calls
        # torch.compile(model) calls a wrapper whose own keys start with `_orig_mod.`.
        for candidate in (module, _holder(module)):
            if candidate is not None and set(compiled.user_state_dict(candidate)) == self._keys:
                return candidate
        return None

    def _arm(self, model: torch.nn.Module) -> None:
        """Load the bundle into the live model and make this iteration the traced failing step."""
        self.loaded = True
        m = self.found.manifest
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        model.load_state_dict({key: self._state[compiled.user_name(key)].to(device) for key in model.state_dict()})
        optimizer = self._optimizer_of(model)
        if optimizer is not None and m.optimizer:
            try:
                optimizer.load_state_dict(self.found.optimizer_state_dict())
            except (ValueError, KeyError, RuntimeError, TypeError) as err:
                self.load_notes.append(f"the bundle's optimizer state did not fit the script's optimizer "
                                       f"({str(err)[:120]}); the step ran with the script's fresh optimizer state")
        if self._restore_rng is not None:
            self._restore_rng(m.step)
        watch = self._new_watch(model, optimizer)
        watch.step_index = m.step
        self.watches[id(optimizer) if optimizer is not None else id(model)] = watch
        self.stop = Stop(step=m.step, check=m.check, what=m.what, watch=watch, bundle=self.found.path)
        params = watch.params()
        # Module paths as the run that wrote the bundle named them (a bundle from before these keys: as now).
        for key in ("model_name", "qualified_modules"):
            if key in (m.rebuild or {}):
                watch.rebuild[key] = m.rebuild[key]
        self.rerun = Rerun(model, m.precision, m.step, m.check, None, list(self._bundle_calls), params,
                           model_name=watch.rebuild.get("model_name"),
                           qualified_modules=bool(watch.rebuild.get("qualified_modules")))
        self.rerun.batches = list(self.failing_batches)
        self._know(model)

    def _optimizer_of(self, model: torch.nn.Module) -> Optional[torch.optim.Optimizer]:
        mine = {id(p) for p in model.parameters()}
        for optimizer in list(self._optimizers):
            if {id(p) for g in optimizer.param_groups for p in g["params"]} <= mine:
                return optimizer
        return None

    def _on_fire(self, event: dict[str, Any]) -> None:
        return     # the replay traces the bundled step; nothing else fires

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Optional[tuple]:
        if self.rerun is not None and self.rerun.state == "tracing":
            return super()._before_step(optimizer, args, kwargs)      # finishes the re-run and stops the script
        # `optimizer.step(closure)` (Lightning's automatic optimization): the script's first training
        # call, where the bundled step begins, runs inside this closure, after this hook. The step
        # ends where the closure does; left to the next step's hook, the re-run would trace on
        # through the rest of the script (a Lightning fit, its validation and test loops).
        return with_checked_closure(args, kwargs, lambda closure: self._bundled_closure_ran(optimizer))

    def _bundled_closure_ran(self, optimizer: torch.optim.Optimizer) -> None:
        if self.rerun is not None and self.rerun.state == "tracing":
            self._at_step(optimizer)         # finishes the re-run and stops the script

    def _after_backward(self) -> None:
        if self.rerun is None:
            return
        self.rerun.after_backward()
        if self.rerun.state == "tracing" and self.stop is not None and self.stop.watch.optimizer is None:
            self._finish_rerun()           # a loop with no optimizer: its step ends with the backward pass
            from .script_guard import ScriptStop
            raise ScriptStop()


def replay_script(found: Bundle, trust: bool) -> tuple[TrainingScript, ReplayGuard, ScriptOutcome]:
    """Run the bundled script up to its failing step (see the module docstring)."""
    script = (found.manifest.rebuild or {}).get("script") or {}
    shown = " ".join(script.get("argv") or [])
    if not trust:
        raise InputError(f"crash bundle {found.path} comes from the training script `{shown}`; replaying it runs that "
                         "script (your code) again up to the failing step, which nandoctor does only with --trust. Pass "
                         "--trust if you trust it, or --model FILE defining build_model() and training_step(model, batch).")
    path, cwd = Path(script["path"]), script["cwd"]
    if not path.is_file():
        raise InputError(f"crash bundle {found.path}: its training script {path} is not there any more; replay it "
                         "where the script is, or pass --model FILE.")
    if not os.path.isdir(cwd):
        raise InputError(f"crash bundle {found.path}: the script ran in {cwd}, which does not exist here; replay it "
                         "on the machine (and in the folder) where it ran.")
    argv = list(script["argv"])
    target = TrainingScript(path=path, module=script.get("module"), args=argv[1:])
    guard = ReplayGuard(found, out=Path(cwd) / "nandoctor-bundles")
    with _working_directory(cwd):
        outcome = execute_script(target, guard)
    if not guard.loaded:
        raise InputError(f"crash bundle {found.path}: the script `{shown}` ran, but no module of it has the "
                         f"bundle's weights ({len(guard._keys)} tensors, e.g. {sorted(guard._keys)[:3]}); was it changed "
                         "since? Pass --model FILE to replay with your own code.")
    return target, guard, outcome


def history_records(found: Bundle) -> list[dict[str, Any]]:
    return [{k: decode_value(v) for k, v in h.items()} for h in found.manifest.history]


@contextlib.contextmanager
def _working_directory(path: str) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)
