"""A crash bundle as a source of runs: the pieces `nandoctor replay` (api.replay) runs.

The bundle becomes a model file: `build_model()` returns the model with the bundle's weights,
`build_optimizer()` the optimizer with its state, `get_batch()` the captured micro-batches,
`training_step()` runs them, and `restore_rng()` puts every generator back where the step
began. The step then runs through the scan's own engine (runner.run_precision: the recorded
step, then the traced replay of a failing one), diagnosis and confirming experiments.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import random
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ...errors import InputError
from ...load.bundle import Bundle, decode_value, user_name
from ..compiled import uncompiled, user_named_parameters
from ...load.model_file import ModelFile, load_model_file
from ...trace import EarlyWarning, ModelInfo, NonfiniteEvent, Phase, RunStatus, RunTrace, StepRecord, from_plain

# Where in the step each check of the watch looks.
CHECK_PHASE = {"batch": Phase.DATA, "loss": Phase.FORWARD, "gradients": Phase.BACKWARD,
               "parameters": Phase.OPTIMIZER, "loss-scale": Phase.BACKWARD}
_SAFE_OPTIMIZER_MODULES = ("torch.optim",)


# ---- the bundle as a model file -----------------------------------------------------------------

def bundle_model_file(found: Bundle, model: str | Path | None, trust: bool) -> tuple[ModelFile, Callable[[], ModelInfo]]:
    """A ModelFile whose functions restore the bundle's state, and a ModelInfo getter."""
    m = found.manifest
    rebuild = m.rebuild or {"kind": "plain"}
    kind = rebuild.get("kind", "plain")
    user: Optional[ModelFile] = None
    if model is not None:
        user = load_model_file(model, required=("build_model",))
        build, step_fn, display = user.build_model, user.training_step, user.display
        average = True
    elif kind == "lightning":
        build, step_fn = _lightning_builder(found, rebuild, trust)
        display, average = rebuild.get("class", "LightningModule"), True
    elif kind == "huggingface":
        build, step_fn = _transformers_builder(found, rebuild)
        display, average = rebuild.get("class", "PreTrainedModel"), True
    else:
        raise InputError(
            f"crash bundle {found.path} comes from a plain training loop, so nandoctor needs your code to re-run "
            f"its step: pass --model model.py, a file defining build_model() (the model as your loop builds it) and "
            f"training_step(model, batch) -> loss (what your loop calls backward() on, for one micro-batch), or "
            f"loss_fn(outputs, targets) when each batch is (inputs, targets). Bundled model class: "
            f"{rebuild.get('model_class', 'unknown')}.")

    micro_batches = found.micro_batches()
    if not micro_batches:
        raise InputError(f"crash bundle {found.path} holds no batch (the watch saw no `watch.step(batch)`); "
                         "the step cannot be re-run.")
    state = found.model_state()
    holder: dict[str, torch.nn.Module] = {}

    def build_model() -> torch.nn.Module:
        net = build()
        if not isinstance(net, torch.nn.Module):
            return net          # TrainingSession reports it
        try:
            # A build_model() that compiles its model: the weights go into the module inside
            # torch.compile's wrapper (the bundle's names are the user's, without `_orig_mod.`).
            missing, unexpected = uncompiled(net).load_state_dict(state, strict=False)
        except RuntimeError as err:
            raise InputError(f"crash bundle {found.path}: its weights do not fit the model built for the replay "
                             f"({str(err).splitlines()[0][:300]}).") from None
        if missing or unexpected:
            raise InputError(f"crash bundle {found.path}: its weights do not fit the model built for the replay "
                             f"(missing: {', '.join(missing[:6]) or 'none'}; unexpected: {', '.join(unexpected[:6]) or 'none'}).")
        holder["model"] = net
        return net

    def build_optimizer(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return _restore_optimizer(found, holder["model"], user, params, trust)

    if step_fn is None and len(micro_batches) == 1 and isinstance(micro_batches[0], (tuple, list)) \
            and len(micro_batches[0]) == 2:
        # One (inputs, targets) batch: the scan's own forward + loss_fn path, label checks included.
        get_batch: Callable[[int], Any] = lambda step: micro_batches[0]
        training_step = None
    else:
        per_batch = step_fn or _forward_and_loss(user, found)
        get_batch = lambda step: list(micro_batches)
        training_step = _accumulate(per_batch, average)

    spec = ModelFile(path=Path(user.path) if user else found.path / "manifest.json", module=user.module if user else None,
                     build_model=build_model, get_batch=get_batch, loss_fn=user.loss_fn if user else None,
                     build_optimizer=build_optimizer, build_scheduler=None, training_step=training_step,
                     restore_rng=_rng_restorer(found))

    def model_info() -> ModelInfo:
        net = holder.get("model")
        if net is None:
            return ModelInfo()
        types: dict[str, int] = {}
        net = uncompiled(net)
        for module in net.modules():
            types[type(module).__name__] = types.get(type(module).__name__, 0) + 1
        params = list(net.parameters())
        return ModelInfo(cls=type(net).__name__, modules=sum(types.values()), parameters=sum(p.numel() for p in params),
                         trainable=sum(p.numel() for p in params if p.requires_grad), module_types=types)

    return spec, model_info


def _accumulate(per_batch: Callable[[Any, Any], Any], average: bool) -> Callable[[Any, Any], Any]:
    """Every micro-batch's loss into one loss: the gradients equal the accumulated ones (one
    backward of the mean instead of one per micro-batch of loss / n)."""
    def training_step(model: Any, micro_batches: list[Any]) -> Any:
        losses = [_as_loss(per_batch(model, b)) for b in micro_batches]
        total = losses[0] if len(losses) == 1 else torch.stack([l.reshape(()) for l in losses]).sum()
        return total / len(losses) if average and len(losses) > 1 else total
    return training_step


def _as_loss(value: Any) -> Any:
    if isinstance(value, dict) and "loss" in value:
        return value["loss"]
    loss = getattr(value, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else value


def _forward_and_loss(user: Optional[ModelFile], found: Bundle) -> Callable[[Any, Any], Any]:
    from ..session import default_loss

    def step(model: Any, batch: Any) -> Any:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise InputError(f"crash bundle {found.path}: its batches are not (inputs, targets) pairs, so the model "
                             "file must define training_step(model, batch) -> loss.")
        inputs, targets = batch
        outputs = model(**inputs) if isinstance(inputs, dict) else model(*inputs) if isinstance(inputs, (tuple, list)) \
            else model(inputs)
        return (user.loss_fn if user and user.loss_fn else default_loss)(outputs, targets)
    return step


def _restore_optimizer(found: Bundle, model: torch.nn.Module, user: Optional[ModelFile], params: list[Any],
                       trust: bool) -> torch.optim.Optimizer:
    spec = found.manifest.optimizer or {}
    state = found.optimizer_state_dict()
    if user is not None and user.build_optimizer is not None:
        names = [user_name(n) for n in spec.get("param_names") or [] if isinstance(n, str)]
        by_name = dict(user_named_parameters(model))
        if names and len(names) != len(params) and all(n in by_name for n in names):
            # The recorded optimizer held some of the parameters only (a GAN's generator
            # optimizer): build_optimizer gets those, as the run's own loop gave them.
            params = [by_name[n] for n in names]
        optimizer = user.build_optimizer(params)
    else:
        module_name, _, qualname = str(spec.get("class", "")).partition(":")
        if not any(module_name == m or module_name.startswith(m + ".") for m in _SAFE_OPTIMIZER_MODULES) and not trust:
            raise InputError(f"crash bundle {found.path}: its optimizer class {spec.get('class')} is not one of "
                             "torch.optim's; nandoctor imports nothing else from a bundle without --trust. Pass "
                             "--trust, or --model FILE defining build_optimizer(params).")
        try:
            cls = _import_attr(module_name, qualname)
        except (ImportError, AttributeError) as err:
            raise InputError(f"crash bundle {found.path}: cannot import its optimizer class {spec.get('class')} ({err}).") from None
        names = [user_name(n) if isinstance(n, str) else n for n in spec.get("param_names") or []]
        by_name = dict(user_named_parameters(model))
        groups = []
        for group in state["param_groups"]:
            try:
                members = [by_name[names[i]] for i in group["params"]]
            except (IndexError, KeyError, TypeError):
                raise InputError(f"crash bundle {found.path}: its optimizer names parameters that the replayed model "
                                 "does not have; pass --model FILE with build_optimizer(params).") from None
            groups.append({**{k: v for k, v in group.items() if k != "params" and v is not None}, "params": members})
        optimizer = cls(groups)
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError, TypeError) as err:
        raise InputError(f"crash bundle {found.path}: its optimizer state does not fit the replay's optimizer "
                         f"({str(err)[:200]}).") from None
    return optimizer


def scaler_loader(found: Bundle) -> Optional[Callable[[Any], None]]:
    scaler = found.manifest.scaler
    if not scaler:
        return None

    def apply(session: Any) -> None:
        if getattr(session, "scaler", None) is not None and hasattr(session.scaler, "load_state_dict"):
            session.scaler.load_state_dict({k: decode_value(v) for k, v in scaler.items()})
    return apply


def _rng_restorer(found: Bundle) -> Optional[Callable[[int], None]]:
    tensors = found.rng_tensors()
    if not tensors:
        return None
    plain = found.manifest.rng or {}

    def restore(step: int) -> None:
        torch.set_rng_state(tensors["cpu"])
        cuda = [tensors[f"cuda:{i}"] for i in range(int(plain.get("cuda_devices", 0))) if f"cuda:{i}" in tensors]
        if cuda and torch.cuda.is_available() and torch.cuda.device_count() >= len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        python = plain.get("python")
        if python and "python" in tensors:
            random.setstate((python["version"], tuple(int(v) for v in tensors["python"].tolist()), python.get("gauss_next")))
        numpy = sys.modules.get("numpy")
        if numpy is not None and "numpy" in tensors and plain.get("numpy"):
            n = plain["numpy"]
            numpy.random.set_state((n["name"], tensors["numpy"].numpy().astype("uint32"), n["pos"], n["has_gauss"],
                                    n["cached_gaussian"]))
    return restore


# ---- frameworks -----------------------------------------------------------------------------------

def _lightning_builder(found: Bundle, rebuild: dict[str, Any], trust: bool) -> tuple[Callable, Callable]:
    target = rebuild.get("class", "")
    if not trust:
        raise InputError(f"crash bundle {found.path} comes from a Lightning run of {target}; replaying it imports that "
                         "module (your code), which nandoctor does only with --trust. Pass --trust if you trust the "
                         "bundle, or --model FILE defining build_model() and training_step(model, batch).")
    module_name, _, qualname = target.partition(":")
    try:
        cls = _import_attr(module_name, qualname, rebuild.get("file"))
    except (ImportError, AttributeError, OSError) as err:
        raise InputError(f"crash bundle {found.path}: cannot import the LightningModule {target} ({err}); run the "
                         "replay where that module is importable, or pass --model FILE.") from None
    hparams = {k: decode_value(v) for k, v in (rebuild.get("init_args") or {}).items()}
    hparams.update({k: decode_value(v) for k, v in (rebuild.get("hparams") or {}).items()})

    def build() -> Any:
        missing = _missing_arguments(cls, hparams)
        if missing:
            where = _init_site(cls)
            raise InputError(f"crash bundle {found.path}: {target}.__init__ needs {', '.join(missing)}, which the bundle "
                             f"does not hold (the module neither saved them with `self.save_hyperparameters()` nor "
                             f"kept them as attributes of the same name). Add `self.save_hyperparameters()` to "
                             f"{cls.__name__}.__init__{' (' + where + ')' if where else ''} for future runs; to replay "
                             f"this bundle, pass --model FILE defining build_model() and training_step(model, batch).")
        return cls(**{k: v for k, v in hparams.items() if _accepts(cls, k)})

    def step(model: Any, batch: Any) -> Any:
        if getattr(model, "automatic_optimization", True) is False:
            return _manual_optimization_step(model, batch)
        return model.training_step(batch, 0)
    return build, step


class _DeferredOptimizer:
    """What `self.optimizers()` hands a manual-optimization training_step in the replay. The
    replay runs the bundled optimizer's backward and step itself, so that optimizer's
    `manual_backward(loss)` + `step()` only hand it the loss; any other optimizer (a GAN's
    discriminator) runs its backward and step right there, as in the recorded run."""

    def __init__(self, inner: Any, replayed: bool, pending: list[Any], losses: list[Any]):
        self.inner, self.replayed, self._pending, self._losses = inner, replayed, pending, losses

    def step(self, closure: Any = None) -> None:
        if closure is not None:
            closure()
        loss = self._pending.pop() if self._pending else None
        if self.replayed:
            self._losses.append(loss)
            return
        if loss is not None:
            loss.backward()
        self.inner.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not self.replayed:
            self.inner.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _manual_optimization_step(model: Any, batch: Any) -> Any:
    """A LightningModule with `automatic_optimization = False` calls `self.optimizers()` and
    `self.manual_backward()`, which need a Trainer: outside one, stand-ins. The first optimizer
    `configure_optimizers()` returns is the one the callback watched and the bundle holds."""
    configured = model.configure_optimizers()
    if isinstance(configured, dict):
        configured = configured.get("optimizer")
    if isinstance(configured, tuple) and len(configured) == 2 and isinstance(configured[0], (list, tuple)):
        configured = configured[0]        # (optimizers, schedulers)
    optimizers = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    optimizers = [o.get("optimizer") if isinstance(o, dict) else o for o in optimizers]
    pending: list[Any] = []
    losses: list[Any] = []
    handed = [_DeferredOptimizer(o, i == 0, pending, losses) for i, o in enumerate(optimizers)]
    stand_ins = {"optimizers": lambda use_pl_optimizer=True: handed[0] if len(handed) == 1 else handed,
                 "manual_backward": lambda loss, *args, **kwargs: pending.append(loss),
                 "toggle_optimizer": lambda *args, **kwargs: None,
                 "untoggle_optimizer": lambda *args, **kwargs: None}
    model.__dict__.update(stand_ins)
    try:
        out = model.training_step(batch, 0)
    finally:
        for name in stand_ins:
            model.__dict__.pop(name, None)
    found = [loss for loss in losses if loss is not None] or pending
    return found[-1] if found else out


def _missing_arguments(cls: Any, given: dict[str, Any]) -> list[str]:
    try:
        parameters = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return []
    return [name for name, p in parameters.items() if name != "self" and name not in given
            and p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _accepts(cls: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return True
    return name in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())


def _init_site(cls: Any) -> str:
    try:
        from ..frames import location
        return str(location(inspect.getsourcefile(cls.__init__) or "", inspect.getsourcelines(cls.__init__)[1]))
    except (OSError, TypeError):
        return ""


def _transformers_builder(found: Bundle, rebuild: dict[str, Any]) -> tuple[Callable, Callable]:
    name = str(rebuild.get("class", ""))
    try:
        import transformers
    except ImportError:
        raise InputError(f"crash bundle {found.path} holds a Hugging Face model ({name}); install transformers to "
                         "replay it.") from None
    cls = getattr(transformers, name, None) if name.isidentifier() else None
    if not isinstance(cls, type) or not issubclass(cls, transformers.PreTrainedModel):
        raise InputError(f"crash bundle {found.path} names the model class {name!r}, which is not a model class of "
                         "the transformers package; only those are built from a bundle. Pass --model FILE.")
    config_data = {k: decode_value(v) for k, v in (rebuild.get("config") or {}).items()}

    def build() -> Any:
        config = cls.config_class.from_dict(config_data)
        return cls(config)

    def step(model: Any, batch: Any) -> Any:
        if not isinstance(batch, dict):
            raise InputError(f"crash bundle {found.path}: a Hugging Face micro-batch must be a dict of forward "
                             "keyword arguments.")
        return model(**batch).loss
    return build, step


def _import_attr(module_name: str, qualname: str, file: Optional[str] = None) -> Any:
    try:
        if module_name == "__main__":
            # A class defined in the training script itself: `__main__` here is nandoctor's own
            # entry point, so load the script by path under another name; its
            # `if __name__ == "__main__":` block (the training run) does not execute.
            raise ImportError("defined in the training script")
        module = importlib.import_module(module_name)
    except ImportError:
        if not file or not Path(file).is_file():
            raise
        if module_name == "__main__":
            module_name = f"nandoctor_replayed_script_{Path(file).stem}"
        spec = importlib.util.spec_from_file_location(module_name, file)
        if spec is None or spec.loader is None:
            raise
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        # Its own imports of sibling files (`from model import Net`) resolve as they did when
        # `python train.py` ran from that folder: the file's folder is on the path.
        folder = str(Path(file).resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        spec.loader.exec_module(module)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


# ---- outcomes that the step engine does not produce ---------------------------------------------

def mark_not_reproduced(run: RunTrace, found: Bundle) -> None:
    """The watched run went non-finite; a replay that stays finite never passes: nonreproducible."""
    m = found.manifest
    last = run.steps[-1] if run.steps else None
    seen = (f"the replay's loss was {last.loss:.6g} and its gradient norm {last.grad_norm:.6g}, all finite"
            if last is not None and last.loss is not None and last.grad_norm is not None else "the replay stayed finite")
    run.status = RunStatus.NONFINITE.value
    run.first_nonfinite = NonfiniteEvent(
        precision=run.precision, step=m.step, phase=CHECK_PHASE.get(m.check, Phase.FORWARD).value, kind="nan",
        surfaced_in=m.check, reproduced=False,
        detail=f"the watched run saw: {m.what}; replayed from the bundle, {seen}")


def after_step_run(found: Bundle, precision: str) -> RunTrace:
    """A bundle written after the optimizer step that made the NaN cannot be re-run; its state
    is still evidence (the optimizer's settings, the parameters' dtype, which tensors broke)."""
    m = found.manifest
    state = found.model_state()
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    run = RunTrace(precision=precision, status=RunStatus.NONFINITE.value, steps_requested=1, start_step=m.step)
    groups = (m.optimizer or {}).get("param_groups") or [{}]
    run.optimizer = {"name": str((m.optimizer or {}).get("class", "")).rpartition(":")[2]}
    for key in ("lr", "eps", "weight_decay", "momentum", "betas"):
        if key in groups[0]:
            value = decode_value(groups[0][key])
            run.optimizer[key] = list(value) if isinstance(value, tuple) else value
    floating = [t for t in state.values() if t.is_floating_point()]
    if floating:
        run.param_dtype = str(floating[0].dtype).replace("torch.", "")
    run.first_nonfinite = NonfiniteEvent(
        precision=precision, step=m.step, phase=Phase.OPTIMIZER.value, kind="nan", surfaced_in="parameters",
        parameter=bad[0] if bad else None, module=bad[0].rpartition(".")[0] if bad else "", reproduced=None,
        detail=f"{m.what}; the bundle was written after that optimizer step, so it cannot be re-run "
               f"({len(bad)} tensor(s) non-finite: {', '.join(bad[:5])})")
    return run


def history_records(found: Bundle) -> list[StepRecord]:
    """The watched run's steps before the bundled one, oldest first, as trace records (the
    manifest's `history` window; `param_norm` and `update_ratio` when the watch recorded them).
    A value that is not a number is left out, never guessed."""
    m = found.manifest
    records = []
    for entry in m.history:
        if not isinstance(entry, dict):
            continue
        step = entry.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step >= m.step:
            continue
        values = {key: _number(decode_value(entry.get(key))) for key in
                  ("loss", "grad_norm", "lr", "scale", "param_norm", "update_ratio")}
        records.append(StepRecord(step=step, loss=values["loss"], grad_norm=values["grad_norm"], lr=values["lr"],
                                  loss_scale=values["scale"], skipped=entry.get("skipped") is True,
                                  param_norm=values["param_norm"], update_ratio=values["update_ratio"]))
    return sorted(records, key=lambda r: r.step)


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def differences(found: Bundle, device: torch.device) -> list[str]:
    """What differs between the watched run and this replay (shown as notes)."""
    m = found.manifest
    notes = []
    if m.versions.get("torch") and m.versions["torch"] != torch.__version__:
        notes.append(f"the bundle was written with torch {m.versions['torch']}; this replay runs torch {torch.__version__}")
    if m.device and torch.device(m.device).type != device.type:
        notes.append(f"the watched run used {m.device}; this replay runs on {device} (random numbers and kernels differ)")
    if m.detail.get("truncated_micro_batches"):
        notes.append("the watch kept only the first micro-batches of this step")
    return notes


def early_warning_records(found: Bundle) -> list[EarlyWarning]:
    """The warnings the watch recorded before the bundled step (manifest detail
    `early_warnings`); an entry that does not read as one is left out."""
    records = []
    for entry in found.manifest.detail.get("early_warnings") or []:
        try:
            record = from_plain(EarlyWarning, decode_value(entry))
        except (TypeError, ValueError, KeyError, AttributeError):
            continue
        if isinstance(record, EarlyWarning) and isinstance(record.step, int) and record.step <= found.manifest.step:
            records.append(record)
    return records
