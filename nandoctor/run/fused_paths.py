"""torch's fused inference fast paths, and what makes a call leave them.

`nn.MultiheadAttention` and `nn.TransformerEncoderLayer` / `nn.TransformerEncoder` run a fused
kernel in eval mode with nothing to differentiate, unless "some Tensor argument has
torch_function": any active TorchFunctionMode sends them down the slow path. The two paths do
not give the same numbers (the fast path turns a fully padded row into NaN, the slow path into
zeros), so nandoctor's own function modes step aside for such a call.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .mode_stack import leave_function_mode
from .probes import StepProbe

FAST_PATH_TYPES = (torch.nn.MultiheadAttention, torch.nn.TransformerEncoderLayer, torch.nn.TransformerEncoder)


def may_take_fast_path(module: torch.nn.Module) -> bool:
    """Whether this call may run a fused inference fast path (torch's own checks decide the
    rest): an attention or encoder module in eval mode with nothing to differentiate."""
    if not isinstance(module, FAST_PATH_TYPES) or module.training:
        return False
    return not torch.is_grad_enabled() or not any(p.requires_grad for p in module.parameters())


# ---- which path a step took (crash bundles record it; replays compare) --------------------------
# The paths are described in trace/paths.py. The bundle records them when it is written (from
# the model, the optimizer and the watch's precision: nothing runs per step); the replay watches
# its own step (PathObserver) and reports the sites whose path differs.

_SDPA = torch.nn.functional.scaled_dot_product_attention
# torch.nn.attention.SDPBackend values -> trace/paths.py SDPA_BACKENDS names.
_SDPA_BACKEND_NAMES = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}
# The fused kernels the fast paths run, as the dispatch mode sees them.
_FAST_PATH_OPS = ("_native_multi_head_attention", "_transformer_encoder_layer_fwd")
# The device types the fast paths run on ("some Tensor argument's device is neither one of cpu, cuda").
_FAST_PATH_DEVICES = ("cpu", "cuda", "privateuseone")


def autocast_dtype(precision: str) -> str:
    """"bfloat16" / "float16" for a mixed precision's autocast, "off" otherwise."""
    return {"bf16-mixed": "bfloat16", "16-mixed": "float16"}.get(precision, "off")


def enabled_sdpa_backends(device_type: str) -> list[str]:
    """The SDPA backends torch may choose on this device type, in its order of preference: the
    ones enabled (torch.backends.cuda.*_sdp_enabled, which CPU obeys too) and built."""
    cuda = torch.backends.cuda
    candidates = [("flash", cuda.flash_sdp_enabled()), ("efficient", cuda.mem_efficient_sdp_enabled()),
                  ("cudnn", cuda.cudnn_sdp_enabled()), ("math", cuda.math_sdp_enabled())]
    if device_type == "cpu":
        candidates = [(name, on) for name, on in candidates if name in ("flash", "math")]
    elif device_type == "cuda":
        built = {"flash": cuda.is_flash_attention_available(), "cudnn": torch.backends.cudnn.is_available()}
        candidates = [(name, on and built.get(name, True)) for name, on in candidates]
    return [name for name, on in candidates if on]


def sdpa_backend(args: tuple, kwargs: dict) -> str:
    """The backend torch chooses for an `F.scaled_dot_product_attention(*args, **kwargs)` call
    ("flash", "efficient", "cudnn", "math"; "unknown" when it cannot tell), from the same
    checks the call itself makes (a few microseconds, no tensor work)."""
    try:
        device = args[0].device.type
        if torch.is_autocast_enabled(device) and args[0].is_floating_point():
            # Autocast casts SDPA's floating inputs below this point, and the backend depends on
            # the dtype (flash needs 16-bit on CUDA): choose for uninitialised stand-ins of that dtype.
            low = torch.get_autocast_dtype(device)
            args = tuple(_as_dtype(a, low) for a in args)
            kwargs = {k: _as_dtype(v, low) for k, v in kwargs.items()}
        return _SDPA_BACKEND_NAMES.get(int(torch._fused_sdp_choice(*args, **kwargs)), "unknown")
    except Exception:     # noqa: BLE001 - e.g. inside a functorch transform: the choice is unknown
        return "unknown"


def _as_dtype(value: Any, dtype: torch.dtype) -> Any:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dtype == dtype:
        return value
    with torch.no_grad():
        stand_in = torch.empty_strided(value.shape, value.stride(), dtype=dtype, device=value.device)
    return stand_in.requires_grad_(value.requires_grad)


def why_backend_unavailable(backend: str, device_type: str) -> str:
    """Why this replay cannot run an SDPA backend on a device type ("" when it could)."""
    if backend == "math":
        return ""
    if device_type == "cpu" and backend != "flash":
        return f"torch has no {backend} attention kernel on CPU"
    if device_type == "cuda" and not torch.cuda.is_available():
        return "this machine has no CUDA device"
    if backend not in enabled_sdpa_backends(device_type):
        return f"this torch build has no {backend} attention kernel on {device_type}, or it is disabled"
    return ""


def optimizer_implementation(optimizer: Any) -> Optional[tuple[str, str, str]]:
    """(path, device type, why) of an optimizer's step: "fused", "foreach" or "for-loop"; None for
    an optimizer with a single implementation (no `fused`/`foreach` settings)."""
    groups = getattr(optimizer, "param_groups", None) or []
    params = [p for g in groups for p in g.get("params", []) if isinstance(p, torch.Tensor)]
    device = params[0].device.type if params else ""

    def default_foreach(group: dict[str, Any]) -> Optional[bool]:
        try:   # torch's own default for these parameters (foreach on CUDA tensors, the for-loop on CPU)
            from torch.optim.optimizer import _default_to_fused_or_foreach
            return _default_to_fused_or_foreach(params, bool(group.get("differentiable")), use_fused=False)[1]
        except (ImportError, TypeError, RuntimeError):
            return None
    return settings_implementation(groups, device, default_foreach)


def settings_implementation(groups: list[dict[str, Any]], device: str,
                            default_foreach: Any = None) -> Optional[tuple[str, str, str]]:
    """The implementation param groups' `fused`/`foreach` settings select on a device type (a
    crash bundle's groups, or a live optimizer's); torch's default when neither is set: foreach
    on CUDA, the for-loop elsewhere (`default_foreach(group)` may say it for live parameters)."""
    if not groups or not any("foreach" in g or "fused" in g for g in groups):
        return None
    group = groups[0]
    if group.get("fused"):
        return "fused", device, "fused=True"
    if group.get("foreach"):
        return "foreach", device, "foreach=True"
    if group.get("foreach") is False:
        return "for-loop", device, "foreach=False"
    foreach = default_foreach(group) if default_foreach is not None else None
    if foreach is None:
        foreach = device == "cuda" and not group.get("differentiable")
    return ("foreach" if foreach else "for-loop"), device, f"torch's default on {device}"


def fast_path_blocker(module: torch.nn.Module, autocast_on: bool) -> str:
    """Why a fast-path module's own settings keep it on the slow path ("" when they allow the
    fast path); torch's own checks on the call's inputs decide the rest."""
    attn = module.self_attn if isinstance(module, torch.nn.TransformerEncoderLayer) else module
    params = list(module.parameters())
    device = params[0].device.type if params else "cpu"
    checks = (
        (not torch.backends.mha.get_fastpath_enabled(), "torch.backends.mha.get_fastpath_enabled() is False"),
        (module.training, "training is enabled"),
        (not isinstance(attn, torch.nn.MultiheadAttention), "its attention is not nn.MultiheadAttention"),
        (getattr(attn, "num_heads", 0) % 2 != 0, "an odd number of heads"),
        (not getattr(attn, "batch_first", False), "batch_first is False"),
        (getattr(attn, "bias_k", None) is not None or getattr(attn, "bias_v", None) is not None, "bias_k/bias_v are set"),
        (getattr(attn, "add_zero_attn", False), "add_zero_attn is enabled"),
        (not getattr(attn, "_qkv_same_embed_dim", True), "query, key and value have different sizes"),
        (autocast_on, "autocast is enabled"),
        (device not in _FAST_PATH_DEVICES, f"its parameters are on {device}"),
    )
    return next((why for blocked, why in checks if blocked), "")


def recorded_paths(model: torch.nn.Module, optimizers: list[Any], device: torch.device, precision: str,
                   sdpa_seen: Optional[dict[str, tuple[str, str]]] = None,
                   torch_version: str = torch.__version__) -> list[Any]:
    """The paths a watched run's step took, as far as its model, optimizer and settings tell
    (written into the crash bundle's `paths`; no tensor is touched). The SDPA backend of each call
    depends on its inputs, which the watch does not keep: one entry names the backends the device
    had enabled, for every call, and `sdpa_seen` (site -> (backends, device type)) adds the backends
    each site's calls took on the watch's sampled steps (its early-warning sampler sees them)."""
    from ..trace.paths import (AUTOCAST, DEVICE, EVERY_CALL, FAST_PATH, OPTIMIZER, SDPA, TORCH, ExecutionPath)
    from .compiled import uncompiled
    from ..load.bundle import user_name
    mixed = autocast_dtype(precision)
    entries = [ExecutionPath("device", DEVICE, device.type), ExecutionPath("torch", TORCH, torch_version),
               ExecutionPath("autocast", AUTOCAST, mixed)]
    enabled = enabled_sdpa_backends(device.type)
    if enabled:
        entries.append(ExecutionPath(EVERY_CALL, SDPA, "/".join(enabled), device.type,
                                     why="the backend is chosen per call among these"))
    for site, (backends, on) in sorted((sdpa_seen or {}).items()):
        known = "/".join(b for b in backends.split("/") if b != "unknown")    # unknown: nothing to compare
        if known:
            entries.append(ExecutionPath(site, SDPA, known, on, why="its calls on the watch's sampled steps"))
    for name, module in uncompiled(model).named_modules():
        if isinstance(module, (torch.nn.MultiheadAttention, torch.nn.TransformerEncoderLayer)):
            blocker = fast_path_blocker(module, mixed != "off")
            params = list(module.parameters())
            path = "slow" if blocker else "fast"
            if not blocker and any(p.requires_grad for p in params):
                # torch's check of the call's grad mode decides, and the watch did not see it.
                path, blocker = "fast/slow", "its parameters need gradients: fast only where called under torch.no_grad()"
            entries.append(ExecutionPath(user_name(name), FAST_PATH, path,
                                         params[0].device.type if params else device.type, why=blocker))
    for index, optimizer in enumerate(o for o in optimizers if o is not None):
        found = optimizer_implementation(optimizer)
        if found is not None:
            entries.append(ExecutionPath(OPTIMIZER if index == 0 else f"{OPTIMIZER}[{index}]", OPTIMIZER, found[0],
                                         found[1], why=found[2]))
    return entries


class PathObserver(StepProbe):
    """Which path each attention call of a replayed step took: the SDPA backend torch chose for
    its inputs (a function mode sees the call), and whether a fast-path module ran its fused kernel
    (a dispatch mode sees the op). The function mode steps aside for a module that may take its
    fast path, as the origin tracer's does, so the observed step runs the user's numbers."""

    def __init__(self, model: torch.nn.Module):
        from .compiled import uncompiled
        from ..load.bundle import user_name
        self.model = uncompiled(model)
        self._names = {id(m): user_name(n) for n, m in self.model.named_modules()}
        self._stack: list[str] = []
        self._handles: list[Any] = []
        self._mode: Optional[_SdpaChoiceMode] = None
        self._aside: Optional[torch.nn.Module] = None
        self._fast_ops: Optional[_FusedOpMode] = None
        self._fast_stack: list[list[Any]] = []          # [module, fused op seen] of the running fast-path modules
        self.sdpa: dict[str, list[str]] = {}           # site -> backends of its calls ("flash on cpu")
        self.fast_path: dict[str, list[str]] = {}      # site -> "fast" / "slow" per call
        self.fast_path_why: dict[str, str] = {}        # site -> why its last slow call was slow
        self.devices: dict[str, str] = {}

    def on_phase(self, phase: Any) -> None:
        from ..trace import Phase
        if phase == Phase.FORWARD and self._mode is None:
            self._attach()
        elif phase in (Phase.BACKWARD, Phase.OPTIMIZER) and self._mode is not None:
            self.detach()

    def _attach(self) -> None:
        for module in self.model.modules():
            self._handles.append(module.register_forward_pre_hook(self._enter))
            self._handles.append(module.register_forward_hook(self._exit, always_call=True))
        self._mode = _SdpaChoiceMode(self)
        self._mode.__enter__()

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._fast_ops is not None:          # a forward that raised inside a fast-path module
            self._fast_ops.__exit__(None, None, None)
        if self._mode is not None:
            leave_function_mode(self._mode)     # wherever it sits (nothing when stepped aside)
        self._mode, self._aside, self._fast_ops, self._fast_stack = None, None, None, []

    def site(self) -> str:
        return self._stack[-1] if self._stack else ""

    def _enter(self, module: Any, args: Any) -> None:
        self._stack.append(self._names.get(id(module), type(module).__name__))
        if not isinstance(module, FAST_PATH_TYPES):
            return
        if self._aside is None and self._mode is not None and may_take_fast_path(module):
            # TransformerEncoder included: its nested-tensor fast path has the same condition.
            if leave_function_mode(self._mode):
                self._aside = module
        if isinstance(module, torch.nn.TransformerEncoder):
            return          # its layers take (or leave) the fused kernels, each recorded on its own
        # One dispatch mode for the outermost fast-path module; a fused op belongs to the innermost.
        self._fast_stack.append([module, False])
        if self._fast_ops is None:
            self._fast_ops = _FusedOpMode(self._fast_stack)
            self._fast_ops.__enter__()

    def _exit(self, module: Any, args: Any, output: Any) -> None:
        name = self._stack.pop() if self._stack else ""
        if self._fast_stack and self._fast_stack[-1][0] is module:
            _, seen = self._fast_stack.pop()
            if not self._fast_stack and self._fast_ops is not None:
                self._fast_ops.__exit__(None, None, None)
                self._fast_ops = None
            params = list(module.parameters())
            self.devices[name] = params[0].device.type if params else ""
            took = "fast" if seen else "slow"
            self.fast_path.setdefault(name, []).append(took)
            if took == "slow":
                self.fast_path_why[name] = (fast_path_blocker(module, torch.is_autocast_enabled())
                                            or ("gradients are enabled for its inputs or parameters"
                                                if torch.is_grad_enabled() and any(p.requires_grad for p in params)
                                                else "torch's checks of the call's inputs (masks, self-attention, "
                                                     "batched input)"))
        if self._aside is module:
            self._aside = None
            if self._mode is not None:
                self._mode.__enter__()

    def paths(self) -> list[Any]:
        from ..trace.paths import FAST_PATH, SDPA, ExecutionPath
        entries = []
        for site, seen in self.sdpa.items():
            known = [b for b in seen if not b.startswith("unknown")]       # unknown: nothing to compare
            if not known:
                continue
            backends = dict.fromkeys(b.partition(" on ")[0] for b in known)
            entries.append(ExecutionPath(site, SDPA, "/".join(backends), known[0].partition(" on ")[2],
                                         calls=len(seen)))
        for site, seen in self.fast_path.items():
            took = "fast" if all(s == "fast" for s in seen) else "slow"
            entries.append(ExecutionPath(site, FAST_PATH, took, self.devices.get(site, ""),
                                         why=self.fast_path_why.get(site, "") if took == "slow" else "",
                                         calls=len(seen)))
        return entries


class _SdpaChoiceMode(TorchFunctionMode):
    def __init__(self, observer: PathObserver):
        super().__init__()
        self.observer = observer

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        if func is _SDPA and args and isinstance(args[0], torch.Tensor):
            self.observer.sdpa.setdefault(self.observer.site(), []).append(
                f"{sdpa_backend(args, kwargs)} on {args[0].device.type}")
        return func(*args, **kwargs)


class _FusedOpMode(TorchDispatchMode):
    """Active while fast-path modules run: marks the innermost one whose fused kernel ran."""

    def __init__(self, running: list[list[Any]]):
        super().__init__()
        self.running = running

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        if self.running and func.__name__.split(".")[0] in _FAST_PATH_OPS:
            self.running[-1][1] = True
        return func(*args, **(kwargs or {}))
