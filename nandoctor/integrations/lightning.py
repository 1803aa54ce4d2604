"""`NanDoctorCallback` for PyTorch Lightning: `nandoctor.watch` inside `Trainer.fit`.

    from nandoctor.integrations.lightning import NanDoctorCallback
    trainer = lightning.Trainer(callbacks=[NanDoctorCallback(out="nandoctor-bundles")])

Where it looks (Lightning's automatic optimization):
- `on_train_batch_start`: the batch of every micro-batch (gradient accumulation included) and
  the random generators, before `training_step`;
- `on_before_backward`: the loss;
- `on_before_optimizer_step`: the gradients, after the precision plugin unscaled them and
  before gradient clipping (the one host sync of the step);
- the optimizer's step post-hook: the parameters; the precision plugin's GradScaler: skips.
The bundle names the LightningModule class and its hyperparameters (`save_hyperparameters()`),
so `nandoctor replay BUNDLE --trust` rebuilds it and calls its `training_step`.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Optional

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the older package name
    try:
        from pytorch_lightning.callbacks import Callback  # type: ignore[no-redef]
    except ImportError as err:
        raise ImportError("nandoctor.integrations.lightning needs the `lightning` package "
                          "(pip install lightning)") from err

from ..watcher.guard import Watch, callback_options


class NanDoctorCallback(Callback):
    """Guard `Trainer.fit` against NaN/Inf; options as `nandoctor.watch` (out, on_nonfinite,
    stats_every, window, check_every, sink, snapshot, skip_streak)."""

    def __init__(self, out: str | Path = "nandoctor-bundles", on_nonfinite: str = "raise", stats_every: int = 50,
                 window: int = 64, check_every: int = 1, sink: Any = None, **options: Any):
        super().__init__()
        self.options = callback_options(out=out, on_nonfinite=on_nonfinite, stats_every=stats_every, window=window,
                                        check_every=check_every, sink=sink, **options)
        self.watch: Optional[Watch] = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.watch is not None:       # an earlier fit() of this callback that did not end cleanly
            self.watch.close()
            self.watch = None
        optimizers = list(trainer.optimizers)
        if not optimizers:
            return
        plugin = getattr(trainer.strategy, "precision_plugin", None) or getattr(trainer, "precision_plugin", None)
        schedulers = getattr(trainer, "lr_scheduler_configs", None) or []
        clip = trainer.gradient_clip_val
        # What the trainer says is the default; an option the user passed to the callback wins.
        found = dict(scheduler=schedulers[0].scheduler if schedulers else None, precision=str(trainer.precision),
                     grad_clip=float(clip) if clip else None, rebuild=_rebuild(pl_module))
        self.watch = Watch(pl_module, _raw(optimizers[0]), getattr(plugin, "scaler", None),
                           gradient_check="manual", inputs="manual", **{**found, **self.options})
        self.watch.step_index = int(trainer.global_step)      # a resumed run counts on from its checkpoint

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.watch is not None:
            self.watch.begin_micro_batch(batch)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        if self.watch is not None:
            self.watch.loss(loss)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.watch is not None:
            self.watch.check_gradients()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._close()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._close()

    def _close(self) -> None:
        if self.watch is not None:
            self.watch.close()


def _raw(optimizer: Any) -> Any:
    # LightningOptimizer wraps the torch optimizer; hooks belong on the torch one.
    return getattr(optimizer, "_optimizer", optimizer)


def _rebuild(pl_module: Any) -> dict[str, Any]:
    cls = type(pl_module)
    try:
        hparams = json.loads(json.dumps(dict(pl_module.hparams)))
    except (TypeError, ValueError):
        hparams = {}
    try:
        file = inspect.getfile(cls)
    except (TypeError, OSError):
        file = None
    return {"kind": "lightning", "class": f"{cls.__module__}:{cls.__qualname__}", "file": file, "hparams": hparams,
            "init_args": _init_args(pl_module, hparams)}


def _init_args(pl_module: Any, hparams: dict[str, Any]) -> dict[str, Any]:
    """`__init__` arguments that `save_hyperparameters()` did not record but the module kept as
    attributes of the same name (`self.vocab_size = vocab_size`): enough to rebuild it. Only
    plain JSON values; anything else is left for the replay to ask for by name."""
    try:
        parameters = inspect.signature(type(pl_module).__init__).parameters
    except (TypeError, ValueError):
        return {}
    found: dict[str, Any] = {}
    for name, parameter in parameters.items():
        if name == "self" or name in hparams or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name not in pl_module.__dict__:      # nn.Module keeps plain attributes in __dict__
            continue
        try:
            found[name] = json.loads(json.dumps(pl_module.__dict__[name]))
        except (TypeError, ValueError):
            continue
    return found
