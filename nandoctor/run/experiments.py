"""Confirming experiments: re-run the failing stretch with exactly one change.

Requests come from the diagnosis as plain data; each becomes one or more runs through the
same TrainingSession.run_step as the scan, unrecorded, stopped at the first failure.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import torch

from ..trace import ExperimentRequest
from ..load.model_file import ModelFile
from ..trace.vocab import Precision
from .precision import parse_precision
from ..trace import ExperimentResult
from .runner import Deadline
from .session import Overrides, TrainingSession
from .user_code import UserCodeFailed

# How many steps past the failing step an experiment runs (a fix that only delays the
# failure by a step or two is not a fix).
EXTRA_STEPS = 5
# A lower learning rate that only slows a drift (a loss unbounded below along one direction: a
# log-variance or log-std pushed down by the same amount every step) delays the failure in
# proportion: lr / k fails about k times later, a step the planned horizon rarely reaches, where
# the run would look finite and "confirm" the lower lr. A lower-lr variant therefore runs on to
# DELAY_MARGIN x k x (the steps to the failure), so a delay shows as a later failure, when that is
# at most DELAY_CAP times the planned steps and within EXTENSION_SHARE of the budget left.
DELAY_MARGIN = 1.25
DELAY_CAP = 20
EXTENSION_SHARE = 0.5


def _variants(request: ExperimentRequest, lr: Optional[float]) -> list[tuple[str, Overrides, int, dict]]:
    """(label, overrides, first step to check, change) for one request."""
    step = request.step
    dtype_step = {"step-fp32": torch.float32, "step-bf16": torch.bfloat16, "step-fp64": torch.float64}
    if request.id == "lower-lr":
        return [(f"lr {lr:.0e} -> {lr / f:.0e}" if lr else f"lr / {f}", Overrides(lr_scale=1 / f), 0,
                 {"lr_scale": 1 / f}) for f in (10, 100)]
    if request.id == "sanitise-batch":
        return [("every batch passed through nan_to_num", Overrides(batch_fix="sanitise"), 0, {"batch_fix": "nan_to_num"})]
    if request.id == "skip-batch":
        return [("batches holding NaN/Inf skipped", Overrides(batch_fix="skip"), 0, {"batch_fix": "skip"})]
    if request.id in dtype_step:
        dtype = dtype_step[request.id]
        name = str(dtype).replace("torch.", "")
        return [(f"step {step} re-run in {name}", Overrides(switch_dtype_at=(step, dtype)), step, {"dtype": name, "from_step": step})]
    if request.id == "clip-grad":
        return [("gradients clipped at norm 1.0", Overrides(grad_clip=1.0), 0, {"grad_clip": 1.0})]
    if request.id == "reinit":
        return [("every module re-initialised with reset_parameters()", Overrides(reinit=True), 0, {"reinit": True})]
    if request.id == "raise-eps":
        return [("optimizer eps raised to 1e-4", Overrides(eps=1e-4), 0, {"eps": 1e-4})]
    return []


def _delay_horizon(change: dict[str, Any], failing_step: int, start_step: int, planned: int) -> int:
    """The last step a lower-lr variant runs to: where a failure it only delayed would come."""
    scale = change.get("lr_scale")
    if not scale or scale >= 1:
        return planned
    delayed = start_step + math.ceil(DELAY_MARGIN * (failing_step - start_step + 1) / scale) - 1
    return delayed if delayed - start_step + 1 <= DELAY_CAP * (planned - start_step + 1) else planned


def run_experiments(requests: list[ExperimentRequest], model_file: ModelFile, config: dict[str, Any],
                    device: torch.device, budget_seconds: float, start_step: int = 0,
                    initial_state: Optional[Callable] = None) -> list[ExperimentResult]:
    deadline = Deadline(budget_seconds)
    results: list[ExperimentResult] = []
    for request in requests:
        lr = request.lr
        for label, overrides, _, change in _variants(request, lr):
            result = ExperimentResult(id=request.id, label=label, precision=request.precision, change=change)
            results.append(result)
            if deadline.expired:
                result.outcome, result.note = "timeout", "the experiment budget ran out"
                continue
            _run_one(result, overrides, request, model_file, config, device, deadline, start_step, initial_state)
    return results


def _run_one(result: ExperimentResult, overrides: Overrides, request: ExperimentRequest, model_file: ModelFile,
             config: dict[str, Any], device: torch.device, deadline: Deadline, start_step: int,
             initial_state: Optional[Callable]) -> None:
    began = time.perf_counter()
    last = max(request.step + EXTRA_STEPS, start_step + config["steps"] - 1)
    if request.id.startswith("step-"):
        last = request.step + 1   # a dtype change answers about this step, not the run
    planned = last
    last = max(last, _delay_horizon(result.change, request.step, start_step, planned))
    # The steps past the planned horizon use at most this share of the budget left.
    extension_ends = time.monotonic() + EXTENSION_SHARE * min(deadline.left(), 1e9)
    result.steps_planned = last - start_step + 1
    precision: Precision = parse_precision(request.precision)
    try:
        session = TrainingSession(model_file, config, precision, device, overrides=overrides, initial_state=initial_state)
        result.outcome = "finite"
        for step in range(start_step, last + 1):
            if deadline.expired:
                result.outcome, result.note = "timeout", "the experiment budget ran out"
                break
            if step > planned and time.monotonic() >= extension_ends:
                result.note = (f"finite through step {step - 1}; the run past step {planned}, to where a failure "
                               f"only delayed by the lower learning rate would come (step {last}), ran out of its "
                               "share of the budget")
                break
            step_result = session.run_step(step)
            result.steps_run += 1
            if step_result.failure is not None or step_result.error is not None:
                result.outcome = "nonfinite" if step_result.failure else "error"
                result.first_bad_step = step
                break
    except UserCodeFailed as failed:
        result.outcome, result.note = "error", f"{failed.error.exc_type}: {failed.error.message}"
    except Exception as err:  # noqa: BLE001 - an experiment that cannot run is reported, not fatal
        result.outcome, result.note = "error", f"{type(err).__name__}: {err}"
    result.seconds = time.perf_counter() - began
