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
run no hook and no mode. A warning needs a level past its threshold and growth over the samples
(a model that always sits at a large but steady value is not diverging).
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable, Optional

import torch
from torch.overrides import TorchFunctionMode

from ..run import compiled, stats
from ..run.training_defaults import primary_output
from .distributed import local_tensor
from .spikes import watch_options
from ..trace.warnings import EARLY_WARNING_DEFAULTS, EarlyWarning

_SOFTMAX = {torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax}
_SDPA = torch.nn.functional.scaled_dot_product_attention

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
        sampler = self.sampler
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
        self.names = [name for name, _ in compiled.user_named_modules(model)]
        self.modules = [m for _, m in compiled.user_named_modules(model)]
        # A compiled model's modules run inside its graph: hooks there would break or recompile
        # it, so only the optimizer-side statistics (Adam update RMS, second moments) are sampled.
        self.layer_hooks = not compiled.has_compiled_parts(model)
        self.series: dict[tuple[str, str], deque[tuple[int, float]]] = {}
        self.warned: set[tuple[str, str, str]] = set()
        self.stack: list[str] = []              # modules whose forward is running, outermost first
        self.in_mha = False
        self._step: Optional[int] = None
        self._values: list[tuple[str, str, torch.Tensor]] = []   # (module, statistic, device scalar)
        self._handles: list[Any] = []
        self._mode: Optional[_AttentionMode] = None
        self._before: Optional[list[torch.Tensor]] = None

    @property
    def active(self) -> bool:
        return self._step is not None

    def begin_step(self, step: int) -> None:
        if self._step is not None or step % self.every:
            return
        self._step = step
        self._values, self.stack = [], []
        if not self.layer_hooks:
            return
        for index, module in enumerate(self.modules):
            self._handles.append(module.register_forward_pre_hook(self._enter_hook(self.names[index])))
            self._handles.append(module.register_forward_hook(self._module_hook(self.names[index]), always_call=True))
            if isinstance(module, torch.nn.MultiheadAttention):
                self._handles.append(module.register_forward_pre_hook(self._mha_hook(self.names[index]),
                                                                      with_kwargs=True))
        self._mode = _AttentionMode(self)
        self._mode.__enter__()

    def _enter_hook(self, name: str) -> Callable:
        def hook(module: Any, args: Any) -> None:
            self.stack.append(name)
        return hook

    def _module_hook(self, name: str) -> Callable:
        def hook(module: Any, args: Any, output: Any) -> None:
            if self.stack and self.stack[-1] == name:
                self.stack.pop()
            if isinstance(module, torch.nn.MultiheadAttention):
                self.in_mha = False
            if output is None or not torch.is_grad_enabled() or stats.in_functorch_transform():
                return
            tensors = [t for t in stats.floating_tensors(output) if t.numel() > 1]
            if not tensors:
                return
            with torch.no_grad():
                t = tensors[0].detach()
                rms = t.float().square().mean().sqrt()
                self._values.append((name, "act_outlier_ratio", t.abs().amax().float() / rms.clamp_min(1e-30)))
                if module is self.model:
                    logits = primary_output(output)
                    if logits is not None and logits.dim() >= 1 and logits.shape[-1] > 1:
                        logits = logits.detach().float()
                        self._values.append(("", "output_logit_max", logits.abs().amax()))
                        self._values.append(("", "log_z", torch.logsumexp(logits, dim=-1).mean()))
        return hook

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

    def before_update(self, params: list[torch.Tensor]) -> None:
        """Gradients final, weights not yet updated: keep a copy for the per-module update ratio."""
        if self._step is None:
            return
        self._close_mode()
        with torch.no_grad():
            self._before = [p.detach().clone() for p in params]

    def after_update(self, optimizer: Any, params: list[torch.Tensor], owners: list[str]) -> None:
        if self._step is None or self._before is None or len(self._before) != len(params):
            self._before = None
            return
        before, self._before = self._before, None
        with torch.no_grad():
            delta = stats.foreach_norms(torch._foreach_sub([p.detach() for p in params], before))
            # The weights' norm, floored at an RMS of 0.05: weights that start at zero (a position
            # table, a zero-initialised projection) would otherwise show a huge ratio for a normal step.
            floor = torch.tensor([0.05 * math.sqrt(p.numel()) for p in before], device=delta.device)
            weight = torch.maximum(stats.foreach_norms(before), floor)
            for module, d, w in _per_module(owners, delta, weight):
                self._values.append((module, "update_ratio", d / w))
            self._adam_values(optimizer, owners)

    def _adam_values(self, optimizer: Any, owners: list[str]) -> None:
        # The optimizer's own parameter objects: its state is keyed by them, not by views of them.
        pairs = [(p, g) for g in optimizer.param_groups for p in g["params"]]
        sums: dict[str, list[torch.Tensor]] = {}
        for (p, group), owner in zip(pairs, owners):
            state = optimizer.state.get(p, {})
            v, m, step = state.get("exp_avg_sq"), state.get("exp_avg"), state.get("step")
            if not isinstance(v, torch.Tensor) or not isinstance(m, torch.Tensor) or step is None:
                continue
            v, m = local_tensor(v), local_tensor(m)
            beta1, beta2 = group.get("betas", (0.9, 0.999))
            eps = float(group.get("eps", 1e-8))
            t = float(step)
            v_hat = v.float() / (1 - beta2 ** t)
            update = (m.float() / (1 - beta1 ** t)) / (v_hat.sqrt() + eps)
            # An entry no gradient has reached yet (the embedding row of a token, or a position,
            # that no batch used so far) has both moments exactly zero: its update is 0, not m / eps.
            # Only entries that had a gradient can have a second moment that collapsed.
            reached = (v != 0) | (m != 0)
            parts = sums.setdefault(owner, [])
            parts.append(torch.stack([update.square().sum(), ((v_hat < eps * eps) & reached).float().sum(),
                                      torch.tensor(float(v.numel()), device=v.device), reached.float().sum()]))
        for owner, parts in sums.items():
            total = torch.stack(parts).sum(0)
            self._values.append((owner, "update_rms", (total[0] / total[2]).sqrt()))
            self._values.append((owner, "exp_avg_sq_collapse", total[1] / total[3].clamp(min=1)))

    def finish(self) -> None:
        """The end of the step: one host transfer, then the trends are read."""
        step = self._step
        if step is None:
            return
        self._close_mode()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        values, self._values, self.stack, self._before, self._step = self._values, [], [], None, None
        self.in_mha = False
        if not values:
            return
        device = values[0][2].device
        numbers = torch.stack([v.reshape(()).float().to(device) for _, _, v in values]).tolist()
        sample: dict[tuple[str, str], float] = {}
        for (module, statistic, _), number in zip(values, numbers):
            key = (module, statistic)
            # Several calls of one module (or several attention calls in it): the largest.
            sample[key] = number if key not in sample or _larger(number, sample[key]) else sample[key]
        for key, number in sample.items():
            self.series.setdefault(key, deque(maxlen=int(self.options["samples"]))).append((step, number))
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
        if self._mode is not None:
            mode, self._mode = self._mode, None
            try:
                mode.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - another mode was entered above ours and not left
                pass

    def _judge(self, step: int, key: tuple[str, str]) -> None:
        module, statistic = key
        points = list(self.series[key])
        value = points[-1][1]
        if statistic == "update_rms":
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
            return
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


def _larger(a: float, b: float) -> bool:
    return math.isnan(b) or (not math.isnan(a) and abs(a) > abs(b))


def _per_module(owners: list[str], delta: torch.Tensor, weight: torch.Tensor) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    groups: dict[str, list[int]] = {}
    for i, owner in enumerate(owners):
        groups.setdefault(owner, []).append(i)
    out = []
    for owner, idx in groups.items():
        index = torch.tensor(idx, device=delta.device)
        out.append((owner, delta.index_select(0, index).square().sum().sqrt(),
                    weight.index_select(0, index).square().sum().sqrt()))
    return out


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
