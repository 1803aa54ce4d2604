"""Early warnings of the known Transformer instabilities, sampled every N optimizer steps.

Wortsman et al. (2023, "Small-scale proxies for large-scale Transformer training
instabilities") show, in small models at high learning rates, the signs that come before a
divergence: attention logits that keep growing (attention entropy collapse, then overflow),
output logits drifting away from log Z = 0, Adam's second moment falling below eps**2 so its
update size jumps, and activations whose max dwarfs their RMS. On a sampled step this module
measures each, per module, on the device:

- attention: max |q.k| * scale of every `F.scaled_dot_product_attention` call (from its q and k),
  every `nn.MultiheadAttention` (from its input projection) and every softmax inside a module
  (a hand-written attention's scores);
- output logits: max |logit| and mean log Z (logsumexp over the last dim) of the model's output;
- activations: max |x| / rms(x) of every module's output;
- the optimizer step: per module ||dw|| / ||w||, and for Adam the RMS of the bias-corrected
  update m / (sqrt(v) + eps) and the share of v below eps**2.

All of it reaches the host in one transfer at the end of the sampled step; unsampled steps
run no hook and no mode. The function mode is on torch's stack only while a forward of one of the
model's modules runs (the outermost call's always-called forward hook takes it off, also when
that forward raises), so a step that raises in backward, in the loss or in the user's own code
leaves nothing behind. A warning needs a level past its threshold and growth over the samples
(a model that always sits at a large but steady value is not diverging).
"""
from __future__ import annotations

import contextlib
import math
from collections import deque
from typing import Any, Callable, Optional

import torch
from torch.overrides import TorchFunctionMode

from ..run import compiled, stats
from ..run.fused_paths import FAST_PATH_TYPES, may_take_fast_path, sdpa_backend
from ..run.mode_stack import function_mode_on_stack, leave_function_mode
from ..run.training_defaults import primary_output
from .distributed import local_tensor
from .spikes import watch_options
from ..trace.warnings import EARLY_WARNING_DEFAULTS, EarlyWarning

_SOFTMAX = {torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax}
_SDPA = torch.nn.functional.scaled_dot_product_attention
_WATCHED = _SOFTMAX | {_SDPA}

# statistic -> (cause id, threshold key, needs growth over the samples)
_RULES: dict[str, tuple[str, str, bool]] = {
    "attention_logit_max": ("attention-logit-growth", "attention_logit_max", True),
    "output_logit_max": ("output-logit-drift", "output_logit_max", True),
    "log_z": ("output-logit-drift", "log_z_max", True),
    "act_outlier_ratio": ("activation-outliers", "activation_outlier_ratio", True),
    "exp_avg_sq_collapse": ("adam-update-anomaly", "second_moment_collapse", False),
    "update_ratio": ("adam-update-anomaly", "update_ratio_max", False),
}


_WORST_ONLY = ("update_ratio", "exp_avg_sq_collapse", "update_rms")

# The optimizer-step statistics (update ratio, Adam's update RMS and second-moment collapse) are
# measured on an evenly strided sample of at most SAMPLE elements of each parameter and its
# moments (stats.strided_sample, with an odd stride: every column is visited): the sampled step's
# copy and kernels then grow with the number of parameters, not their size (on a GPT-2-small
# shape ~1 s and 340-680 MB on the whole tensors). As for the recorder's update ratios, the
# sample's estimate is within a few percent, and the thresholds these feed are a factor of 2-10
# and more from healthy values.
SAMPLE = 1 << 10

MODE_RECHECK = 8      # a model without attention calls runs the function mode every 8th sample


class InstabilityWarning(RuntimeWarning):
    """Emitted by `watch` for a loss/gradient spike or an early warning (once per kind and module)."""


def early_warning_options(option: Any) -> Optional[dict[str, Any]]:
    """`watch(early_warnings=...)`: None/True (defaults), False (off), or a dict of EARLY_WARNING_DEFAULTS keys."""
    options = watch_options("early_warnings", option, EARLY_WARNING_DEFAULTS)
    return options if options is not None and int(options["every"]) > 0 else None


class _AttentionMode(TorchFunctionMode):
    """Sees SDPA and softmax calls of the sampled step; each belongs to the innermost module
    whose forward is running (the sampler's module stack)."""

    def __init__(self, sampler: "EarlyWarningSampler"):
        super().__init__()
        self.sampler = sampler

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        if func not in _WATCHED:      # nearly every call: no more Python than this on its way through
            return func(*args, **kwargs)
        sampler = self.sampler
        sampler.saw_attention_call = True
        if func is _SDPA and args and isinstance(args[0], torch.Tensor):
            # Which kernel torch picks for this call: the crash bundle's record of the path
            # (run/fused_paths.py); the same checks the call makes, no tensor work. An empty
            # stack is the model's own forward (the step began in its pre-hook, after the global one).
            site = sampler.stack[-1] if sampler.stack else ""
            backend, seen = sdpa_backend(args, kwargs), sampler.sdpa_backends.get(site)
            if seen is not None and backend not in seen[0].split("/"):
                backend = f"{seen[0]}/{backend}"        # calls of one site that took different kernels
            sampler.sdpa_backends[site] = (backend, args[0].device.type)
        # A softmax outside every submodule is the model's output distribution, not attention.
        # Inside torch.func.vmap/grad a reduction cannot leave the transform (stats.in_functorch_transform).
        if (torch.is_grad_enabled() and not sampler.in_mha and len(sampler.stack) > 1
                and not stats.in_functorch_transform()):
            try:
                value = None
                if func is _SDPA:
                    value = _sdpa_logit_max(*args, **kwargs)
                elif func in _SOFTMAX and args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
                    scores = args[0].detach()
                    # Masked positions (-inf) are deliberate; +inf is an overflowed score.
                    value = torch.where(scores == -math.inf, 0.0, scores).abs().amax().float()
                if value is not None:
                    sampler._values.append((sampler.stack[-1], "attention_logit_max", value))
            except Exception:  # noqa: BLE001 - a measurement must never break the user's step
                pass
        return func(*args, **kwargs)


def _sdpa_logit_max(query: torch.Tensor, key: torch.Tensor, *rest: Any, scale: Optional[float] = None,
                    enable_gqa: bool = False, **_: Any) -> torch.Tensor:
    with torch.no_grad():
        q, k = query.detach(), key.detach()
        if q.dim() >= 3 and k.dim() >= 3 and q.shape[-3] != k.shape[-3]:      # grouped-query attention
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        factor = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
        return (q @ k.transpose(-2, -1)).abs().amax().float() * factor


def _mha_logit_max(module: torch.nn.MultiheadAttention, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    query = args[0] if args else kwargs.get("query")
    key = args[1] if len(args) > 1 else kwargs.get("key")
    if not isinstance(query, torch.Tensor) or not isinstance(key, torch.Tensor):
        return None
    e, heads = module.embed_dim, module.num_heads
    with torch.no_grad():
        if module.in_proj_weight is not None:
            wq, wk = module.in_proj_weight[:e], module.in_proj_weight[e:2 * e]
        else:
            wq, wk = module.q_proj_weight, module.k_proj_weight
        bias = module.in_proj_bias
        q = torch.nn.functional.linear(query.detach(), wq, bias[:e] if bias is not None else None)
        k = torch.nn.functional.linear(key.detach(), wk, bias[e:2 * e] if bias is not None else None)
        if not module.batch_first and q.dim() == 3:
            q, k = q.transpose(0, 1), k.transpose(0, 1)
        if q.dim() == 2:
            q, k = q.unsqueeze(0), k.unsqueeze(0)
        b, lq, _ = q.shape
        d = e // heads
        q = q.reshape(b, lq, heads, d).transpose(1, 2)
        k = k.reshape(b, k.shape[1], heads, d).transpose(1, 2)
        return (q @ k.transpose(-2, -1)).abs().amax().float() / math.sqrt(d)


class EarlyWarningSampler:
    """One per watch. `begin_step`, `before_update`, `after_update`, `finish` are the watch's
    step boundaries; only sampled steps do anything."""

    def __init__(self, model: torch.nn.Module, options: dict[str, Any], emit: Callable[[EarlyWarning], None]):
        self.model = model
        self.options = options
        self.every = int(options["every"])
        self.emit = emit
        named = compiled.user_named_modules(model)
        self.names = [name for name, _ in named]
        self.modules = [m for _, m in named]
        self._names_by_id = {id(m): name for name, m in zip(self.names, self.modules)}
        # A compiled model's modules run inside its graph: hooks there would break or recompile
        # it, so only the optimizer-side statistics (Adam update RMS, second moments) are sampled.
        self.layer_hooks = not compiled.has_compiled_parts(model)
        self.series: dict[tuple[str, str], deque[tuple[int, float]]] = {}
        self.warned: set[tuple[str, str, str]] = set()
        self.stack: list[str] = []              # modules whose forward is running, outermost first
        self.in_mha = False
        # site -> (SDPA backends, "/"-joined, device type) its calls took on sampled steps (the bundle's `paths`)
        self.sdpa_backends: dict[str, tuple[str, str]] = {}
        self._step: Optional[int] = None
        self._values: list[tuple[str, str, torch.Tensor]] = []   # (module, statistic, device scalar)
        # (modules, statistic, device vector): one value per module, reduced together
        self._vectors: list[tuple[list[str], str, torch.Tensor]] = []
        # Module outputs waiting for one fused max |x| and norm (as the watch's statistics hooks
        # do): per-module reductions in the hooks were ~9 kernels per module, each also passing
        # through the attention mode, ~0.3 s per sampled step of a 1000-module model.
        self._pending: list[tuple[str, torch.Tensor, int]] = []
        self._pending_bytes = 0
        self._eager: set[str] = set()           # modules whose outputs change in place after their hook
        self._handles: list[Any] = []
        self._mode: Optional[_AttentionMode] = None
        self._aside: Any = None             # the fast-path module the mode stepped aside for
        self._before: Optional[torch.Tensor] = None      # the samples of the weights before the update
        self._plan: Optional[_UpdatePlan] = None
        self._adam_plan: Optional[_AdamPlan] = None
        # Whether the last sample under the function mode saw a softmax/SDPA call (None: none yet).
        self.saw_attention_call: Optional[bool] = None
        self._samples = 0
        self._forwards_under_mode = 0

    @property
    def active(self) -> bool:
        return self._step is not None

    def begin_step(self, step: int, forward_of: Any = None) -> None:
        """`forward_of`: the module whose forward pre-hook begins the step (its forward is about to
        run): the global hooks installed here missed its call, so it is entered now."""
        if self._step is not None or step % self.every:
            return
        self._step = step
        self._values, self._vectors, self.stack = [], [], []
        self._pending, self._pending_bytes = [], 0
        if not self.layer_hooks:
            return
        # Two global module hooks, not two per module: a hook handle per module and sampled step
        # (2000 objects for a 1000-module model) cost ~0.3 s there in the collections they set off.
        from torch.nn.modules import module as module_hooks
        self._handles.append(module_hooks.register_module_forward_pre_hook(self._enter_hook))
        self._handles.append(module_hooks.register_module_forward_hook(self._exit_hook, always_call=True))
        for index, module in enumerate(self.modules):
            if isinstance(module, torch.nn.MultiheadAttention):
                self._handles.append(module.register_forward_pre_hook(self._mha_hook(self.names[index]),
                                                                      with_kwargs=True))
            if isinstance(module, FAST_PATH_TYPES):
                # The sampled step must run the user's numbers: a function mode would send this
                # module off its fused fast path (run/fused_paths.py), so the mode steps aside.
                self._handles.append(module.register_forward_pre_hook(self._fast_path_aside))
                self._handles.append(module.register_forward_hook(self._fast_path_back, always_call=True))
        # Entered by the outermost module call of the model (_enter_hook), not here: a mode left on
        # the stack for the whole step would outlive a step that raises where no hook of ours runs.
        self._mode = _AttentionMode(self) if self._needs_mode() else None
        if forward_of is not None:
            self._enter_hook(forward_of, ())

    def _needs_mode(self) -> bool:
        """The function mode sees the softmax and SDPA calls inside the model, and every other call
        of the forward passes through its Python handler on the way (~20-40 ms of a sampled step
        of 1000 small modules). A model whose last sample under the mode made no such call is
        sampled without it, but every MODE_RECHECK-th sample runs it again: a forward whose path
        changes (a branch that starts to attend) is seen within that many samples."""
        self._samples += 1
        needed = self.saw_attention_call is not False or (self._samples - 1) % MODE_RECHECK == 0
        if needed:
            # Unknown until a forward of the model runs under this sample's mode (a watch attached
            # after the step's forward, or a step without one, is no evidence either way).
            self.saw_attention_call = None
        self._forwards_under_mode = 0
        return needed

    def _fast_path_aside(self, module: Any, args: Any) -> None:
        if self._mode is None or self._aside is not None or not may_take_fast_path(module):
            return
        if _on_top(self._mode):
            leave_function_mode(self._mode)
            self._aside = module

    def _fast_path_back(self, module: Any, args: Any, output: Any) -> None:
        if self._aside is module:
            self._aside = None
            if self._mode is not None and self.stack:       # still inside the model's forward
                self._mode.__enter__()

    def _enter_hook(self, module: Any, args: Any) -> None:
        name = self._names_by_id.get(id(module))
        if name is None or compiled.compiling():
            return
        if module is self.model and self.stack:
            # The model's own forward does not run inside itself: the stack is left over from a
            # forward that a KeyboardInterrupt (or another BaseException) ended, where torch runs
            # no forward hook.
            self._leave_forward()
        if not self.stack and self._mode is not None and not function_mode_on_stack(self._mode):
            self._mode.__enter__()
            self._forwards_under_mode += 1
        self.stack.append(name)

    def _exit_hook(self, module: Any, args: Any, output: Any) -> None:
        name = self._names_by_id.get(id(module))
        if name is None or compiled.compiling():
            return
        try:
            if self.in_mode:
                with self.outside_mode():
                    self._module_output(name, module, output)
            else:
                self._module_output(name, module, output)
        finally:
            if not self.stack:
                self._leave_forward()

    def _leave_forward(self) -> None:
        """No forward of the model is running (any more): the mode comes off torch's stack."""
        self.stack.clear()
        self.in_mha = False
        self._aside = None
        if self._mode is not None:
            leave_function_mode(self._mode)

    def forward_ended(self) -> None:
        """The caller knows no forward of the model is running (the end of `watch.step()`, also on
        a KeyboardInterrupt): whatever a forward that never returned left behind goes."""
        if self._step is not None:
            self._leave_forward()

    @property
    def in_mode(self) -> bool:
        """A sampled forward is running under the attention mode."""
        return self._mode is not None and self._aside is None

    @contextlib.contextmanager
    def outside_mode(self):
        """nandoctor's own bookkeeping during a sampled forward (this sampler's per-module hook,
        the watch's statistics hooks) steps outside the attention mode: while a function mode is
        active even a tensor's .shape, .numel() or .dtype passes through its Python handler
        (~80 such calls per module output: ~0.1 s of a sampled step on a 1000-module model)."""
        mode = self._mode
        if mode is None or self._aside is not None or not _on_top(mode):
            yield
            return
        leave_function_mode(mode)
        try:
            yield
        finally:
            mode.__enter__()

    def _module_output(self, name: str, module: Any, output: Any) -> None:
        if self.stack and self.stack[-1] == name:
            self.stack.pop()
        if isinstance(module, torch.nn.MultiheadAttention):
            self.in_mha = False
        if output is None or not torch.is_grad_enabled() or stats.in_functorch_transform():
            return
        tensors = [t for t in stats.floating_tensors(output) if t.numel() > 1]
        if not tensors:
            return
        t = tensors[0]
        if name not in self._eager:
            self._pending.append((name, t, t._version))
            self._pending_bytes += t.numel() * t.element_size()
            if self._pending_bytes >= stats.BATCH_BYTES:
                self._reduce_outputs()
        if name in self._eager:
            with torch.no_grad():
                self._values.append((name, "act_outlier_ratio", _outlier_ratios([t.detach()])[0]))
        if module is self.model:
            with torch.no_grad():
                logits = primary_output(output)
                if logits is not None and logits.dim() >= 1 and logits.shape[-1] > 1:
                    logits = logits.detach().float()
                    self._values.append(("", "output_logit_max", logits.abs().amax()))
                    self._values.append(("", "log_z", torch.logsumexp(logits, dim=-1).mean()))

    def _mha_hook(self, name: str) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            if not torch.is_grad_enabled() or stats.in_functorch_transform():
                return
            try:
                value = _mha_logit_max(module, args, kwargs)
            except Exception:  # noqa: BLE001 - a measurement must never break the user's step
                value = None
            if value is not None:
                self._values.append((name, "attention_logit_max", value))
            self.in_mha = True      # its own SDPA/softmax call is this value, not another one
        return hook

    def _reduce_outputs(self) -> None:
        """max |x| / rms(x) of the waiting module outputs, in a handful of fused kernels. An output
        changed in place since its hook is not measured this time; that module's outputs are
        reduced in its hook from then on."""
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        keep = [(name, t) for name, t, version in pending if t._version == version]
        self._eager.update(name for name, t, version in pending if t._version != version)
        if keep:
            with torch.no_grad():
                self._vectors.append(([name for name, _ in keep], "act_outlier_ratio",
                                      _outlier_ratios([t for _, t in keep])))

    def end_passes(self) -> None:
        """The step's forward and backward passes are over (its gradients are being checked): the
        attention mode closes now, not after the checks, which would pass every `.grad` and
        `.shape` read of theirs through its Python handler."""
        if self._step is not None:
            self._close_mode()

    def before_update(self, params: list[torch.Tensor]) -> None:
        """Gradients final, weights not yet updated: keep a copy of each parameter's strided sample
        for the per-module update ratio (a copy of the whole weights was one more model's worth of
        memory on every sampled step: +340 MB of peak RSS on a GPT-2-small shape)."""
        if self._step is None:
            return
        self._close_mode()
        self._reduce_outputs()
        if not params:
            return
        with torch.no_grad():
            self._before = _flat(self._update_plan(params).views)     # one copy of all the samples, one kernel

    def _update_plan(self, params: list[torch.Tensor]) -> "_UpdatePlan":
        """The samples' flat views and their constants, made once per parameter set: per-parameter
        Python on each sampled step was ~40 ms of a 1000-parameter model's."""
        plan = self._plan
        if plan is None or len(plan.params) != len(params) or any(a is not b for a, b in zip(plan.params, params)):
            plan = self._plan = _UpdatePlan(params)
        return plan

    def after_update(self, optimizer: Any, params: list[torch.Tensor], owners: list[str]) -> None:
        plan = self._plan
        if self._step is None or self._before is None or plan is None or len(plan.params) != len(params):
            self._before = None
            return
        before, self._before = self._before, None
        with torch.no_grad():
            delta = _flat(plan.views).sub_(before)
            # Per parameter, its sample's sum of squares times numel / sampled estimates the whole
            # tensor's, so a module's parameters add up as before.
            d = torch.segment_reduce(delta.square_(), "sum", lengths=plan.lengths).mul_(plan.share).sqrt_()
            w = torch.segment_reduce(before.square_(), "sum", lengths=plan.lengths).mul_(plan.share).sqrt_()
            names, d, w = _per_module(owners, d, torch.maximum(w, plan.floor))
            self._vectors.append((names, "update_ratio", d / w))
            self._adam_values(optimizer, owners)

    def _adam_values(self, optimizer: Any, owners: list[str]) -> None:
        """Adam's bias-corrected update RMS and the share of second moments below eps**2, per
        module, from strided samples of the moments: each run of parameters that share betas, eps
        and step (at most stats.BATCH_BYTES of samples) is one flat vector, so the kernel count
        does not grow with the number of parameters (a `_foreach_*` op is a loop of one kernel per
        tensor on the CPU: ~0.1 s per sampled step of a 1000-module model)."""
        plan = self._adam_plan
        if plan is None or not plan.current(optimizer, owners):
            plan = self._adam_plan = _AdamPlan(optimizer, owners)
        names: list[str] = []
        # per parameter: [sum of update**2, count of v_hat < eps**2 among reached entries, numel, reached entries]
        rows: list[torch.Tensor] = []
        with torch.no_grad():
            for run in plan.runs:
                beta1, beta2, eps, t, device = run.key
                v = _stacked_flat(run.v, run.shape_runs, run.total, device)
                m = _stacked_flat(run.m, run.shape_runs, run.total, device)
                # In place where it can be: these are the sampled step's only temporaries.
                # An entry no gradient has reached yet (the embedding row of a token, or a position,
                # that no batch used so far) has both moments exactly zero: its update is 0, not m / eps,
                # and only entries that had a gradient can have a second moment that collapsed.
                reached = v.ne(0).logical_or_(m.ne(0))
                v_hat = v.div_(1 - beta2 ** t)
                below = v_hat.lt(eps * eps).logical_and_(reached)
                update = m.div_(1 - beta1 ** t).div_(v_hat.sqrt_().add_(eps)).square_()
                sums = [torch.segment_reduce(column, "sum", lengths=run.lengths)
                        for column in (update, below.float(), reached.float())]
                row = torch.stack([sums[0], sums[1], run.lengths.to(sums[0].dtype), sums[2]], 1)
                # a sampled parameter's sums stand for its numel / sampled entries
                rows.append(row * run.share[:, None])
                names += run.owners
            if not rows:
                return
            table = torch.cat([r.to(rows[0].device) for r in rows])
            modules, index = _owner_index(names, table.device)
            total = torch.zeros(len(modules), 4, dtype=table.dtype, device=table.device).index_add_(0, index, table)
            self._vectors.append((modules, "update_rms", (total[:, 0] / total[:, 2]).sqrt()))
            self._vectors.append((modules, "exp_avg_sq_collapse", total[:, 1] / total[:, 3].clamp(min=1)))

    def finish(self) -> None:
        """The end of the step: one host transfer, then the trends are read."""
        step = self._step
        if step is None:
            return
        self._close_mode()
        if self._forwards_under_mode and self.saw_attention_call is None:
            self.saw_attention_call = False
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._reduce_outputs()
        values, self._values, self.stack, self._before, self._step = self._values, [], [], None, None
        vectors, self._vectors = self._vectors, []
        self.in_mha = False
        if not values and not vectors:
            return
        device = values[0][2].device if values else vectors[0][2].device
        parts = [v.reshape(-1).to(device, torch.float32) for _, _, v in vectors]
        if values:
            parts.insert(0, torch.stack([v.reshape(()).to(device, torch.float32) for _, _, v in values]))
        numbers = (torch.cat(parts) if len(parts) > 1 else parts[0]).tolist()      # one host transfer
        keys = [(module, statistic) for module, statistic, _ in values]
        keys += [(module, statistic) for names, statistic, _ in vectors for module in names]
        sample: dict[tuple[str, str], float] = {}
        for (module, statistic), number in zip(keys, numbers):
            key = (module, statistic)
            # Several calls of one module (or several attention calls in it): the largest.
            sample[key] = number if key not in sample or _larger(number, sample[key]) else sample[key]
        kept = int(self.options["samples"])
        for key, number in sample.items():
            points = self.series.get(key)
            if points is None:
                points = self.series[key] = deque(maxlen=kept)
            points.append((step, number))
        # Whole-model statistics of the optimizer step are judged at their worst module only: one
        # too-high lr moves every layer at once, and one warning says so.
        worst: dict[str, tuple[str, str]] = {}
        for key, number in sample.items():
            module, statistic = key
            if statistic in _WORST_ONLY and not math.isnan(number):
                if statistic not in worst or _larger(number, sample[worst[statistic]]):
                    worst[statistic] = key
        for key in sample:
            if key[1] not in _WORST_ONLY or worst.get(key[1]) == key:
                self._judge(step, key)

    def close(self) -> None:
        self._close_mode()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._step = None

    def _close_mode(self) -> None:
        self._aside = None
        if self._mode is not None:
            mode, self._mode = self._mode, None
            leave_function_mode(mode)

    def _judge(self, step: int, key: tuple[str, str]) -> None:
        module, statistic = key
        series = self.series[key]
        value = series[-1][1]
        if statistic == "update_rms":
            points = list(series)
            earlier = sorted(v for _, v in points[:-1] if math.isfinite(v))
            if len(earlier) < 3:
                return
            baseline = earlier[len(earlier) // 2]
            limit = float(self.options["update_rms_ratio"]) * baseline
            if baseline > 0 and (value >= limit or not math.isfinite(value)):
                self._warn("adam-update-anomaly", step, module, statistic, value, baseline, points)
            return
        rule = _RULES.get(statistic)
        if rule is None:
            return
        cause, threshold_key, needs_growth = rule
        level = abs(value) if statistic == "log_z" else value
        if not (level >= float(self.options[threshold_key]) or math.isinf(level)):
            return      # nearly every key of a sample: nothing more read
        points = list(series)
        if statistic == "update_ratio" and len(points) < 2:
            return      # Adam's first step moves every weight by lr (m / sqrt(v) = sign): not yet a trend
        baseline = abs(points[0][1]) if statistic == "log_z" else points[0][1]
        if needs_growth:
            if len(points) < 2 or not (level >= float(self.options["growth"]) * baseline or math.isinf(level)):
                return
        self._warn(cause, step, module, statistic, value, baseline, points)

    def _warn(self, cause: str, step: int, module: str, statistic: str, value: float, baseline: float,
              points: list[tuple[int, float]]) -> None:
        key = (cause, "" if statistic in _WORST_ONLY else module, statistic)
        if key in self.warned:
            return
        self.warned.add(key)
        ratio = abs(value) / abs(baseline) if baseline and math.isfinite(value) and math.isfinite(baseline) else None
        self.emit(EarlyWarning(cause=cause, step=step, statistic=statistic, value=value, module=module,
                               baseline=baseline, ratio=ratio, slope=_slope(points), since_step=points[0][0]))


def _on_top(mode: TorchFunctionMode) -> bool:
    """This mode is the innermost active function mode (so it can step aside and back)."""
    from torch.overrides import _get_current_function_mode_stack
    stack = _get_current_function_mode_stack()
    return bool(stack) and stack[-1] is mode


def _larger(a: float, b: float) -> bool:
    return math.isnan(b) or (not math.isnan(a) and abs(a) > abs(b))


def _per_module(owners: list[str], delta: torch.Tensor, weight: torch.Tensor) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(modules, L2 of `delta` per module, L2 of `weight` per module): per-parameter norms summed
    by owner with one index_add each (a loop of index_select per module was ~6 kernels per module)."""
    names, index = _owner_index(owners, delta.device)
    d = torch.zeros(len(names), dtype=delta.dtype, device=delta.device).index_add_(0, index, delta.square())
    w = torch.zeros(len(names), dtype=weight.dtype, device=weight.device).index_add_(0, index, weight.square())
    return names, d.sqrt(), w.sqrt()


class _UpdatePlan:
    """What a sampled step's update ratios need of one parameter set, made once: each parameter's
    strided sample as a flat view (a copy only for a non-contiguous parameter, made again at each
    use), their lengths in the one flat vector, numel / sampled, and the weight-norm floors."""

    def __init__(self, params: list[torch.Tensor]):
        self.params = list(params)
        samples = [stats.strided_sample(p, SAMPLE, odd_stride=True) for p in params]
        device = params[0].device if params else torch.device("cpu")
        self.device = device
        self._views = [s.view(-1) if s.is_contiguous() or s.dim() <= 1 else None for s in samples]
        self._samples = samples
        self.lengths = torch.tensor([s.numel() for s in samples], device=device)
        self.share = torch.tensor([p.numel() / max(1, s.numel()) for p, s in zip(params, samples)], device=device)
        # The weights' norm, floored at an RMS of 0.05: weights that start at zero (a position
        # table, a zero-initialised projection) would otherwise show a huge ratio for a normal step.
        self.floor = torch.tensor([0.05 * math.sqrt(p.numel()) for p in params], device=device)

    @property
    def views(self) -> list[torch.Tensor]:
        return [v if v is not None else s.reshape(-1) for v, s in zip(self._views, self._samples)]


class _AdamRun:
    """Parameters whose moments are reduced as one flat vector: one (betas, eps, step, device)."""

    def __init__(self, key: tuple, entries: list[tuple[str, torch.Tensor, torch.Tensor, Any, int]]):
        order = _shape_order([v for _, v, _, _, _ in entries])      # a stack per shape, not per parameter
        entries = [entries[i] for i in order]
        device = key[4]
        self.key = key
        self.owners = [owner for owner, _, _, _, _ in entries]
        self.v = [v for _, v, _, _, _ in entries]
        self.m = [m for _, _, m, _, _ in entries]
        self.steps = [step for _, _, _, step, _ in entries]
        # The step counters as 0-d views, stacked at each use: whether the run still shares one count.
        self.step_scalars = ([step.reshape(()) for step in self.steps]
                             if all(isinstance(step, torch.Tensor) and step.numel() == 1 and step.device == self.steps[0].device
                                    for step in self.steps) else None)
        self.shape_runs = _shape_runs(self.v)    # v and m share shapes (checked when planned)
        self.total = sum(v.numel() for v in self.v)
        self.lengths = torch.tensor([v.numel() for v in self.v], device=device)
        self.share = torch.tensor([total / v.numel() for _, v, _, _, total in entries], device=device)


class _AdamPlan:
    """The sampled step's view of an Adam's state, made once per state layout: each moment's
    strided sample (a view: Adam updates its moments in place, so the views read the current
    values), grouped into runs. Made again when a moment or step tensor is replaced, betas or eps
    change, or a run's parameters no longer share their step count. Building it is Python per
    parameter (~19 ms of a 1000-parameter model's sampled step); checking it is a few lookups
    per parameter."""

    def __init__(self, optimizer: Any, owners: list[str]):
        self.owners = list(owners)
        self.groups, self.tensors = _adam_layout(optimizer)
        settings = [group[:4] for group in self.groups for _ in range(group[4])]
        found = []
        for (v, m, step), (beta1, beta2, eps, fused), owner in zip(self.tensors, settings, owners):
            if fused and isinstance(v, torch.Tensor) and v.dtype == torch.float16:
                # A fused Adam computes the update in float32 and only stores the moments in float16:
                # a stored second moment that underflowed to 0 is not the one the update divided by.
                continue
            if not (isinstance(v, torch.Tensor) and isinstance(m, torch.Tensor)) or step is None:
                continue
            v, m = local_tensor(v), local_tensor(m)
            if v.shape != m.shape or v.numel() == 0:
                continue
            if v.is_contiguous() and m.is_contiguous():
                sampled = tuple(stats.strided_sample(x, SAMPLE, odd_stride=True) for x in (v, m))
            else:
                sampled = (v, m)
            found.append((owner, *sampled, step, (beta1, beta2, eps), v.numel()))
        counts = _step_counts([entry[3] for entry in found])
        self.steps_in_place = all(isinstance(entry[3], torch.Tensor) for entry in found)
        chunks: dict[tuple, list[list[Any]]] = {}
        for (owner, v, m, step, (beta1, beta2, eps), numel), t in zip(found, counts):
            key = (beta1, beta2, eps, t, v.device)
            runs = chunks.setdefault(key, [[0]])
            if runs[-1][0] and runs[-1][0] + v.numel() * 4 > stats.BATCH_BYTES:
                runs.append([0])
            runs[-1][0] += v.numel() * 4
            runs[-1].append((owner, v, m, step, numel))
        self.runs = [_AdamRun(key, entries) for key, runs in chunks.items() for _, *entries in runs]

    def current(self, optimizer: Any, owners: list[str]) -> bool:
        """Still this optimizer's state, and each run's step count is one number again (read now).
        Steps that are not tensors are new objects at every update: such a plan is never reused."""
        if not self.steps_in_place or owners != self.owners or not _same_tensors(optimizer, self.tensors):
            return False
        if [(*_group_settings(group), len(group["params"])) for group in optimizer.param_groups] != self.groups:
            return False
        for run in self.runs:
            if run.step_scalars is not None:
                low, high = torch.stack(run.step_scalars).aminmax()
                low, high = float(low), float(high)
            else:
                counts = _step_counts(run.steps)
                low, high = min(counts), max(counts)
            if low != high:
                return False
            run.key = (*run.key[:3], low, run.key[4])
        return True


def _adam_layout(optimizer: Any) -> tuple[list[tuple], list[tuple]]:
    """Per group: betas, eps and whether it is fused; per parameter: its moments and step."""
    groups, tensors = [], []
    for group in optimizer.param_groups:
        groups.append((*_group_settings(group), len(group["params"])))
        for p in group["params"]:
            state = optimizer.state.get(p, _NO_STATE)
            tensors.append((state.get("exp_avg_sq"), state.get("exp_avg"), state.get("step")))
    return groups, tensors


_NO_STATE: dict[str, Any] = {}


def _group_settings(group: dict[str, Any]) -> tuple[float, float, float, bool]:
    beta1, beta2 = group.get("betas", (0.9, 0.999))
    return float(beta1), float(beta2), float(group.get("eps", 1e-8)), bool(group.get("fused"))


def _same_tensors(optimizer: Any, tensors: list[tuple]) -> bool:
    """Each parameter's moments and step are still the objects planned (a replaced tensor, as
    load_state_dict makes, is a new state): identity, one pass, no tuples."""
    i, state = 0, optimizer.state
    for group in optimizer.param_groups:
        for p in group["params"]:
            if i >= len(tensors):
                return False
            planned, now = tensors[i], state.get(p, _NO_STATE)
            if (now.get("exp_avg_sq") is not planned[0] or now.get("exp_avg") is not planned[1]
                    or now.get("step") is not planned[2]):
                return False
            i += 1
    return i == len(tensors)


def _flat(views: list[torch.Tensor]) -> torch.Tensor:
    """1-D views as one new float32 vector on the first one's device."""
    device = views[0].device
    if all(v.dtype == views[0].dtype and v.device == device for v in views):
        return torch.cat(views).float()
    return torch.cat([v.to(device, torch.float32) for v in views])


def _shape_order(tensors: list[torch.Tensor]) -> list[int]:
    """The tensors' indices, those of one shape, dtype and device together (first-seen order)."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.shape, t.dtype, t.device), []).append(i)
    return [i for members in groups.values() for i in members]


def _shape_runs(tensors: list[torch.Tensor]) -> list[tuple[int, int]]:
    """(start, end) of each run of equally shaped tensors (same dtype and device) in the list."""
    runs, start = [], 0
    while start < len(tensors):
        first, end = tensors[start], start + 1
        while end < len(tensors) and (tensors[end].shape, tensors[end].dtype, tensors[end].device) == \
                (first.shape, first.dtype, first.device):
            end += 1
        runs.append((start, end))
        start = end
    return runs


def _stacked_flat(tensors: list[torch.Tensor], runs: list[tuple[int, int]], total: int,
                  device: torch.device) -> torch.Tensor:
    """The tensors' values as one new float32 vector of `total` elements on `device`, in their
    order: each run of equally shaped tensors (`_shape_runs`) is stacked straight into its slice,
    so the op count grows with the number of shapes, not of tensors, and nothing is copied twice."""
    out = torch.empty(total, dtype=torch.float32, device=device)
    offset = 0
    for start, end in runs:
        first = tensors[start]
        size = first.numel() * (end - start)
        target = out[offset:offset + size].view(end - start, *first.shape)
        if first.dtype == torch.float32 and first.device == device:
            torch.stack(tensors[start:end], out=target)
        else:
            target.copy_(torch.stack(tensors[start:end]))
        offset += size
    return out


def _step_counts(steps: list[Any]) -> list[float]:
    """Adam's per-parameter step counters as floats: one transfer for tensors on one device
    (torch keeps them as tensors; reading each is a sync per parameter)."""
    if steps and all(isinstance(s, torch.Tensor) and s.numel() == 1 and s.device == steps[0].device for s in steps):
        return torch.stack([s.reshape(()) if s.dim() else s for s in steps]).tolist()
    return [float(s) for s in steps]


def _owner_index(owners: list[str], device: torch.device) -> tuple[list[str], torch.Tensor]:
    """The distinct owners in first-seen order and each entry's position among them."""
    positions: dict[str, int] = {}
    index = [positions.setdefault(owner, len(positions)) for owner in owners]
    return list(positions), torch.tensor(index, dtype=torch.long, device=device)


def _outlier_ratios(tensors: list[torch.Tensor]) -> torch.Tensor:
    """max |x| / rms(x) per tensor (rms floored at 1e-30), fused over the list."""
    max_abs = stats.foreach_max_abs(tensors).to(torch.float32)
    numel = torch.tensor([float(t.numel()) for t in tensors], device=max_abs.device)
    rms = stats.foreach_norms(tensors).to(max_abs.device, torch.float32) / numel.sqrt()
    return max_abs / rms.clamp_min(1e-30)


def _slope(points: list[tuple[int, float]]) -> Optional[float]:
    """Least-squares slope of log10 |value| per 100 steps over the samples."""
    usable = [(s, math.log10(abs(v))) for s, v in points if math.isfinite(v) and v != 0]
    if len(usable) < 2:
        return None
    n = len(usable)
    ms = sum(s for s, _ in usable) / n
    mv = sum(v for _, v in usable) / n
    var = sum((s - ms) ** 2 for s, _ in usable)
    if var == 0:
        return None
    return 100.0 * sum((s - ms) * (v - mv) for s, v in usable) / var
