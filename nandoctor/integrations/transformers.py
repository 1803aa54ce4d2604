"""`NanDoctorCallback` for the Hugging Face `Trainer`: `nandoctor.watch` inside `trainer.train()`.

    from nandoctor.integrations.transformers import NanDoctorCallback
    trainer = transformers.Trainer(..., callbacks=[NanDoctorCallback(out="nandoctor-bundles")])

Where it looks:
- a forward pre-hook on the model (with_kwargs=True): the keyword inputs of every micro-batch,
  `labels` included, and the random generators, before the forward;
- the model output's `.loss`;
- `on_pre_optimizer_step`: the gradients (the step's one host sync). The Trainer calls no
  callback between the last backward and gradient clipping; clipping keeps non-finite
  gradients non-finite (the total norm is NaN/Inf, so is the scale factor), so the verdict is
  the same as before clipping, and the replay names the gradients' origin;
- the optimizer's step post-hook: the parameters; Accelerate's GradScaler: skipped steps (the
  steps `accelerator.optimizer_step_was_skipped` reports).
With `args.logging_nan_inf_filter` on (the default) the Trainer logs the mean of earlier
losses instead of a NaN loss; the callback warns when that hides a NaN it found.
The bundle holds the model's config and its transformers class name, so `nandoctor replay`
rebuilds it without --trust and takes `outputs.loss` as the loss.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Optional

try:
    from transformers import TrainerCallback
except ImportError as err:
    raise ImportError("nandoctor.integrations.transformers needs the `transformers` package") from err

import torch

from ..watcher.guard import NonFiniteWarning, Watch, callback_options


class NanDoctorCallback(TrainerCallback):
    """Guard `Trainer.train()` against NaN/Inf; options as `nandoctor.watch`."""

    def __init__(self, out: str | Path = "nandoctor-bundles", on_nonfinite: str = "raise", stats_every: int = 50,
                 window: int = 64, check_every: int = 1, sink: Any = None, **options: Any):
        self.options = callback_options(out=out, on_nonfinite=on_nonfinite, stats_every=stats_every, window=window,
                                        check_every=check_every, sink=sink, **options)
        self.watch: Optional[Watch] = None
        self._filter_on = False

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       lr_scheduler: Any = None, **kwargs: Any) -> None:
        if self.watch is not None:
            # A train() that an exception ended earlier (the Trainer has no exception callback)
            # left its hooks on the model: remove them before this run adds its own.
            self.watch.close()
            self.watch = None
        if model is None or optimizer is None:
            return
        raw = getattr(optimizer, "optimizer", optimizer)           # AcceleratedOptimizer -> torch optimizer
        precision = "16-mixed" if getattr(args, "fp16", False) else "bf16-mixed" if getattr(args, "bf16", False) else None
        self._filter_on = bool(getattr(args, "logging_nan_inf_filter", False))
        clip = getattr(args, "max_grad_norm", None)
        # What the trainer says is the default; an option the user passed to the callback wins.
        found = dict(scheduler=lr_scheduler, precision=precision, grad_clip=float(clip) if clip else None,
                     rebuild=_rebuild(model))
        self.watch = Watch(model, raw, getattr(optimizer, "scaler", None), gradient_check="manual", inputs="manual",
                           notify=self._notify, **{**found, **self.options})
        self.watch.step_index = int(getattr(state, "global_step", 0) or 0)   # resumed runs count on
        # Owned by the watch, so a raise (which closes the watch) removes it too.
        self.watch.add_handle(model.register_forward_pre_hook(self._forward_inputs, with_kwargs=True))

    def _forward_inputs(self, module: Any, args: Any, kwargs: Any) -> None:
        if self.watch is not None and module.training and torch.is_grad_enabled():
            self.watch.begin_micro_batch(dict(kwargs) if not args else {"args": list(args), **kwargs})

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watch is not None:
            self.watch.check_gradients()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()

    def _notify(self, event: dict[str, Any]) -> None:
        if event["check"] == "loss" and self._filter_on:
            warnings.warn("TrainingArguments.logging_nan_inf_filter is on: the Trainer's logged loss will not show "
                          f"this NaN/Inf loss at step {event['step']} (it logs the mean of earlier losses instead). "
                          "Set logging_nan_inf_filter=False to see it in the logs.", NonFiniteWarning, stacklevel=2)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _rebuild(model: Any) -> dict[str, Any]:
    config = getattr(model, "config", None)
    try:
        data = json.loads(config.to_json_string()) if config is not None else {}
    except (TypeError, ValueError, AttributeError):
        data = {}
    return {"kind": "huggingface", "class": type(model).__name__, "config": data}
