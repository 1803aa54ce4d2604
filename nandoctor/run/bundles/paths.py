"""The replay's execution paths beside the recorded run's (trace/paths.py).

The crash bundle says which paths the recorded step took (`paths`; older bundles: the device,
torch version and precision they always held). A replay that stayed finite runs the step once
more with a PathObserver (run/fused_paths.py) watching which attention kernel and fast path each
call took, reads the optimizer's implementation, and compares; a replay that reproduced the
failure, or a training script's (its own loop ran the step), compares what settings tell.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ...load.bundle import Bundle
from ...load.model_file import ModelFile
from ...trace import Precision
from ...trace.paths import (AUTOCAST, DEVICE, EVERY_CALL, OPTIMIZER, SDPA, TORCH, ExecutionPath, ReplayPaths,
                            compare_paths, paths_from_plain)
from ..fused_paths import (PathObserver, autocast_dtype, optimizer_implementation, recorded_paths, settings_implementation,
                           why_backend_unavailable)
from ..session import TrainingSession


def bundle_paths(found: Bundle) -> tuple[list[ExecutionPath], str]:
    """The recorded run's paths: the manifest's `paths`, or for a bundle written before it
    existed the run-wide facts every manifest holds (device, torch version, precision)."""
    entries, note = paths_from_plain(found.manifest.paths)
    if entries:
        return entries, note
    m = found.manifest
    fallback = [ExecutionPath("autocast", AUTOCAST, autocast_dtype(m.precision))]
    if m.device:
        fallback.insert(0, ExecutionPath("device", DEVICE, m.device.split(":")[0]))
    if m.versions.get("torch"):
        fallback.insert(1, ExecutionPath("torch", TORCH, m.versions["torch"]))
    return fallback, note


def replay_paths(found: Bundle, spec: ModelFile, config: dict[str, Any], precision: Precision, device: torch.device,
                 initial_state: Optional[Callable] = None, observe: bool = True) -> ReplayPaths:
    """Compare the replay's paths with the recorded ones. `observe`: run the bundle's step once
    more, watched by a PathObserver (one step more: a finite replay's verdict depends on it);
    otherwise only the run-wide settings and the optimizer implementation the bundle's param
    groups select on this device (a replay that reproduced the failure: no step is added)."""
    recorded, note = bundle_paths(found)
    replayed = [ExecutionPath("device", DEVICE, device.type), ExecutionPath("torch", TORCH, torch.__version__),
                ExecutionPath("autocast", AUTOCAST, autocast_dtype(precision.value))]
    if not observe:
        groups = (found.manifest.optimizer or {}).get("param_groups") or []
        selected = settings_implementation([g for g in groups if isinstance(g, dict)], device.type)
        if selected is not None:
            replayed.append(ExecutionPath(OPTIMIZER, OPTIMIZER, selected[0], selected[1], why=selected[2]))
        unobserved = "the replay reproduced the failure, so its attention paths were not observed (no step is added)"
        return ReplayPaths(recorded=recorded, replayed=replayed,
                           differences=compare_paths(recorded, replayed, _why_not(recorded, device)),
                           note="; ".join(n for n in (note, unobserved) if n))
    try:
        session = TrainingSession(spec, config, precision, device, initial_state=initial_state)
        observer = PathObserver(session.model)
        try:
            session.run_step(found.manifest.step, observer)
        finally:
            observer.detach()
    except Exception as err:    # noqa: BLE001 - the comparison is evidence beside the replay; it never fails it
        return ReplayPaths(recorded=recorded, replayed=replayed,
                           differences=compare_paths(recorded, replayed, _why_not(recorded, device)),
                           note=(note + "; " if note else "") + f"the step could not be run to observe its paths ({_first_line(err)})")
    replayed += observer.paths()
    found_impl = optimizer_implementation(session.optimizer)
    if found_impl is not None:
        replayed.append(ExecutionPath(OPTIMIZER, OPTIMIZER, found_impl[0], found_impl[1], why=found_impl[2]))
    return ReplayPaths(recorded=recorded, replayed=replayed,
                       differences=compare_paths(recorded, replayed, _why_not(recorded, device)), note=note)


def settings_paths(found: Bundle, model: torch.nn.Module, optimizers: list[Any], device: torch.device,
                   precision: str) -> ReplayPaths:
    """A replay whose step is not observed (a training script run again: its own loop runs the
    step): the paths its model, optimizer and device settings give after the step, against the
    recorded ones. Attention backends per call are not compared, only the device's."""
    recorded, note = bundle_paths(found)
    replayed = recorded_paths(model, optimizers, device, precision)
    unobserved = "the script's own loop ran the step: its attention calls were not observed, only its settings"
    return ReplayPaths(recorded=recorded, replayed=replayed,
                       differences=compare_paths(recorded, replayed, _why_not(recorded, device)),
                       note="; ".join(n for n in (note, unobserved) if n))


def _why_not(recorded: list[ExecutionPath], device: torch.device) -> dict[tuple[str, str], str]:
    """Per recorded (kind, site): why this replay cannot take that path here."""
    reasons: dict[tuple[str, str], str] = {}
    for entry in recorded:
        elsewhere = entry.device and entry.device != device.type
        if entry.kind == DEVICE and entry.path != device.type:
            reasons[(DEVICE, entry.site)] = _device_reason(entry.path, device)
        elif entry.kind == SDPA and entry.site != EVERY_CALL:
            reasons[(SDPA, entry.site)] = (_device_reason(entry.device, device) if elsewhere
                                           else why_backend_unavailable(entry.path, device.type))
        elif elsewhere:
            reasons[(entry.kind, entry.site)] = _device_reason(entry.device, device)
    if (SDPA, EVERY_CALL) in {(e.kind, e.site) for e in recorded}:
        every = next(e for e in recorded if e.kind == SDPA and e.site == EVERY_CALL)
        if every.device and every.device != device.type:
            reasons[(SDPA, EVERY_CALL)] = _device_reason(every.device, device)
    return reasons


def _device_reason(recorded: str, device: torch.device) -> str:
    if recorded == "cuda" and not torch.cuda.is_available():
        return f"this machine has no CUDA device; the replay ran on {device.type}"
    return f"the replay ran on {device.type}"


def _first_line(err: BaseException) -> str:
    text = getattr(getattr(err, "error", None), "message", None) or str(err)
    return text.splitlines()[0][:200] if text else type(err).__name__
