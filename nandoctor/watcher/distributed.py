"""`nandoctor.watch` under torchrun: which rank the NaN was born on, and every rank stops together.

Under DDP or FSDP2 a NaN born in one rank's micro-batch reaches every rank's gradients in the
same backward (the all-reduce / reduce-scatter averages it in), so a check after the collective
cannot say where it came from. This layer adds, per rank:

- a check of what is local to the rank *before* the collective mixes ranks: its batch and loss
  (the guard's own checks) and its gradients as they enter the collective: a DDP communication
  hook around allreduce, or an FSDP2 reduce-scatter that checks its input. Both reduce on the
  device (no host sync inside the hook) and feed `Watch.note_local_gradients`;
- one small collective per checked step: each rank writes its flag vector into its row of a
  world-size table and all-reduces it over a separate gloo group with a timeout, so every rank
  knows who flagged what and all take the same branch (raise, skip, warn) on the same step;
- on a firing, every rank writes its part of the crash bundle (`step-N/rank-R/`, a complete
  single-rank bundle holding its batch, RNG and its shard of the state as safetensors), then the
  ranks agree (over the gloo group, with the timeout) on who wrote, and rank 0 writes
  `step-N/manifest.json` naming the origin rank(s) and the ranks only contaminated.

Hooked into watcher/guard.py through `Watch.flag_hook`, `Watch.write_hook` and
`Watch.distributed` (see `attach_if_distributed`).
"""
from __future__ import annotations

import datetime
import gc
import json
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from ..load.bundle import MANIFEST_NAME, BundleManifest
from . import bundle_writer
from .flags import FLAGS

DEFAULT_TIMEOUT_S = 300.0          # the gloo coordination group's timeout (flag exchange, bundle agreement)
RANK_FOLDER = "rank-{rank}"
DDP_PREFIX = "module."


def local_tensor(t: Any) -> Any:
    """A DTensor's local shard (FSDP2), any other tensor as it is: every check of the guard is
    per rank, and mixing DTensors with plain tensors is an error in torch."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) and type(t).__name__ == "DTensor" else t


def attach_if_distributed(watch: Any, options: Any = "auto") -> Optional["RankGuard"]:
    """The rank-aware layer for a Watch when torch.distributed runs more than one rank; None otherwise.

    `options`: "auto" (the default), False (off), or a dict: timeout (seconds, for the gloo
    coordination group).
    """
    if options is False or options is None:
        return None
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    settings = dict(options) if isinstance(options, dict) else {}
    return RankGuard(watch, timeout=float(settings.get("timeout", DEFAULT_TIMEOUT_S)))


class RankGuard:
    """Per-rank state of a distributed watch: the coordination group, the pre-collective hooks,
    the last exchanged flag table and the bundle writing of every rank."""

    def __init__(self, watch: Any, timeout: float = DEFAULT_TIMEOUT_S):
        import torch.distributed as dist
        self.watch = watch
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.backend = str(dist.get_backend())
        self.timeout = timeout
        # A separate gloo group: the flags travel on the CPU and survive a wedged NCCL communicator;
        # its timeout turns a dead peer into an error instead of a hang.
        self.group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout))
        self.flag_names = list(FLAGS)
        self.table: Optional[list[list[float]]] = None     # world_size rows of the last exchanged flags
        self.armed = False                                 # the last exchange found a non-finite value
        self.enabled = True
        self.kind, self.local_check = "none", "none"
        self._local_records: list[tuple[list[str], torch.Tensor]] = []   # (names, per-name inf-norms)
        self._first_local_bad: Optional[torch.Tensor] = None   # check_every > 1: first unchecked step flagged here
        self._fsdp_comms: list[Any] = []
        self._wrapped_names = _unwrapped_names(watch.model)
        self._install_pre_collective_checks()
        watch.flag_hook = self.exchange
        watch.write_hook = self.write

    # ---- before the collective ----------------------------------------------------------------
    def _install_pre_collective_checks(self) -> None:
        fsdp = _fsdp_modules(self.watch.model)
        ddp = None if fsdp else _find_ddp(self.watch.model)
        if ddp is not None:
            self.kind = "ddp"
            try:
                # Unannotated on purpose: DDP rejects a hook whose annotations are not GradBucket /
                # Future[Tensor], and under `from __future__ import annotations` they are strings.
                def hook(state, bucket):  # noqa: ANN001, ANN202
                    return self._ddp_comm_hook(state, bucket)
                ddp.register_comm_hook(state=None, hook=hook)
                self.local_check = "ddp-comm-hook"
            except RuntimeError as err:      # the user (or the framework) registered a comm hook already
                warnings.warn(f"nandoctor.watch: cannot add its DDP communication hook ({err}); the origin rank is "
                              "found from batches and losses only.", RuntimeWarning, stacklevel=4)
            return
        if fsdp:
            self.kind = "fsdp2"
            installed = 0
            for name, module in fsdp:
                comm = _checked_reduce_scatter(self, name)
                if comm is None or not hasattr(module, "set_custom_reduce_scatter"):
                    continue
                groups = getattr(module._get_fsdp_state(), "_fsdp_param_groups", [])
                if not groups or not _is_default_reduce_scatter(groups):
                    continue                 # no parameters of its own, or a custom comm of the user's
                try:
                    module.set_custom_reduce_scatter(comm)
                    installed += 1
                    self._fsdp_comms.append(comm)
                except (ValueError, AttributeError):
                    continue
            self.local_check = "fsdp2-reduce-scatter" if installed else "none"

    def _ddp_comm_hook(self, state: Any, bucket: Any) -> Any:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        if self.enabled:
            total = _finiteness_probe(bucket.buffer())
            names = [self._wrapped_names.get(id(p), "?") for p in bucket.parameters()]
            self._local_records.append((names, total))
            self.watch.note_local_gradients(total)
        return allreduce_hook(state, bucket)

    def note_reduce_scatter_input(self, module_name: str, flat: torch.Tensor) -> None:
        """FSDP2: this rank's unsharded gradients of one module, as they enter the reduce-scatter."""
        if not self.enabled:
            return
        total = _finiteness_probe(flat)
        self._local_records.append(([module_name or "(root)"], total))
        self.watch.note_local_gradients(total)

    # ---- the per-step collective --------------------------------------------------------------
    def _local_bad(self, flags: torch.Tensor) -> torch.Tensor:
        slot = {n: i for i, n in enumerate(self.flag_names)}
        return flags[[slot["batch_bad"], slot["loss_bad"], slot["local_grads_bad"]]].amax() > 0

    def note_deferred(self, step: int, flags: torch.Tensor) -> None:
        """check_every > 1: an unchecked step's flags. Keeps, on the device, the first step at which
        this rank's own batch, loss or pre-collective gradients went bad: by the checked step the
        NaN may have reached every rank through the weights, and the earliest rank is the origin."""
        first = self._first_local_bad if self._first_local_bad is not None else torch.full((), -1.0, device=flags.device)
        self._first_local_bad = torch.where((first < 0) & self._local_bad(flags), torch.full_like(first, float(step)), first)

    def exchange(self, flags: torch.Tensor) -> torch.Tensor:
        """Watch.flag_hook: all ranks' flags into one table; returns the flags every rank acts on
        (the *_bad slots: any rank's; the values: this rank's own). The table's last column is the
        first step at which the rank's own values went bad (-1: none)."""
        import torch.distributed as dist
        self.note_deferred(self.watch.step_index, flags)
        first = self._first_local_bad.reshape(1).float().cpu()
        self._first_local_bad = None
        row = flags.detach().float().cpu()
        table = torch.zeros(self.world_size, row.numel() + 1)
        table[self.rank] = torch.cat([row, first])
        try:
            dist.all_reduce(table, group=self.group)
        except RuntimeError as err:
            raise RuntimeError(f"nandoctor.watch (rank {self.rank}): the per-step flag exchange with the other ranks "
                               f"failed or timed out after {self.timeout:.0f}s ({str(err).splitlines()[0][:200]}); a "
                               "rank died or is stuck. Set watch(..., distributed={'timeout': S}) to change the "
                               "timeout.") from None
        self.table = table.tolist()
        bad = [i for i, name in enumerate(self.flag_names) if name.endswith("_bad")]
        out = row.clone()
        merged = table[:, :row.numel()][:, bad].amax(dim=0)
        out[bad] = merged
        self.armed = bool(merged.any())
        if not self.armed:
            self._local_records.clear()
        return out.to(flags.device)

    def verdict(self) -> dict[str, Any]:
        """Who flagged what at the last exchange: origin ranks vs ranks only contaminated."""
        table = self.table or []
        slot = {n: i for i, n in enumerate(self.flag_names)}
        per_rank: dict[str, dict[str, Any]] = {}
        firsts = {r: int(row[-1]) for r, row in enumerate(table) if row[-1] >= 0}
        earliest = min(firsts.values()) if firsts else None
        origin, contaminated = [], []
        for r, row in enumerate(table):
            seen: dict[str, Any] = {"batch": bool(row[slot["batch_bad"]]), "loss": bool(row[slot["loss_bad"]]),
                                    "local_gradients": bool(row[slot["local_grads_bad"]]),
                                    "gradients": bool(row[slot["grads_bad"]]), "parameters": bool(row[slot["params_bad"]]),
                                    "first_step": firsts.get(r)}
            per_rank[str(r)] = seen
            if r in firsts and firsts[r] == earliest:
                origin.append(r)
            elif r in firsts or seen["gradients"] or seen["parameters"]:
                contaminated.append(r)     # later than the origin: reached through the collective or the weights
        born_in_collective = not origin and self.local_check != "none" and any(
            v["gradients"] for v in per_rank.values()) and not any(v["parameters"] for v in per_rank.values())
        if not origin and not born_in_collective:
            # Without a local gradient check, or a NaN born in optimizer.step(): every rank that saw it.
            origin, contaminated = contaminated, []
        return {"world_size": self.world_size, "rank": self.rank, "backend": self.backend, "kind": self.kind,
                "local_check": self.local_check, "origin_ranks": origin, "contaminated_ranks": contaminated,
                "born_in_collective": born_in_collective, "flags": per_rank,
                "check_every": int(getattr(self.watch, "check_every", 1))}

    def describe(self, check: str, what: str) -> str:
        """The firing's one line, naming the origin rank(s) (Watch._fire calls it)."""
        if not self.armed or self.table is None:
            return f"rank {self.rank}: {what}"
        v = self.verdict()
        reasons = []
        for r in v["origin_ranks"]:
            seen = v["flags"][str(r)]
            parts = [label for key, label in (("batch", "its batch"), ("loss", "its loss"),
                                               ("local_gradients", "its gradients before the collective"),
                                               ("parameters", "its parameters after optimizer.step()"),
                                               ("gradients", "its gradients")) if seen[key]]
            reasons.append(f"rank {r} ({', '.join(parts[:2])})")
        if v["born_in_collective"]:
            head = ("born in the gradient collective: every rank's gradients were finite before it (an overflow "
                    "of the sum)")
        else:
            head = "born on " + "; ".join(reasons)
        tail = (f"; rank(s) {', '.join(map(str, v['contaminated_ranks']))} {_contaminated_how(v)}"
                if v["contaminated_ranks"] else "")
        if self.rank in v["origin_ranks"]:
            return f"{head}{tail}; on this rank ({self.rank}): {what}"
        own = v["flags"].get(str(self.rank), {})
        seen = [label for key, label in (("gradients", "its gradients after the collective"),
                                         ("parameters", "its parameters")) if own.get(key)]
        return f"{head}{tail}; this rank ({self.rank}) saw it {'in ' + ' and '.join(seen) if seen else 'nowhere itself'}"

    # ---- the crash bundle of every rank -------------------------------------------------------
    def write(self, out: Any, manifest: BundleManifest, model_state: dict[str, Any], optimizer: Any,
              micro_batches: list[Any], rng: Optional[dict[str, Any]],
              param_names: Optional[list[Optional[str]]] = None) -> Path:
        """Watch.write_hook: this rank's part of `out/step-N/`; rank 0 adds the manifest."""
        coordinated = self.armed
        self.armed = False
        verdict = self.verdict() if coordinated else {"world_size": self.world_size, "rank": self.rank,
                                                      "kind": self.kind, "coordinated": False}
        step_folder = self._agree_on_folder(Path(out), manifest.step) if coordinated else \
            bundle_writer.bundle_folder(out, manifest.step)
        manifest.detail["distributed"] = {**verdict, "local_gradients": self._local_names()}
        self._local_records.clear()
        if isinstance(manifest.rebuild, dict) and manifest.rebuild.get("kind") == "plain":
            manifest.rebuild = {**manifest.rebuild, "model_class": _class_name(self.watch.model)}
        state, model_shards = _localise(model_state, strip=self._strip)
        names = [self._strip(n) if n else n for n in (param_names or [])]
        manifest.detail["shards"] = {"model": model_shards}
        local_optimizer = _LocalOptimizer(optimizer, manifest.detail["shards"]) if optimizer is not None else None
        error = None
        try:
            staging = step_folder / f".rank-{self.rank}.staging"
            written = bundle_writer.write_bundle(staging, manifest, state, local_optimizer, micro_batches, rng,
                                                 param_names=names)
            target = step_folder / RANK_FOLDER.format(rank=self.rank)
            shutil.rmtree(target, ignore_errors=True)
            written.rename(target)
            shutil.rmtree(staging, ignore_errors=True)
        except Exception as err:  # noqa: BLE001 - every rank must still join the agreement below
            error = err
        if not coordinated:
            if error is not None:
                raise error
            return step_folder / RANK_FOLDER.format(rank=self.rank)
        wrote = self._agree_on_writers(error is None)
        if self.rank == 0:
            self._write_top_manifest(step_folder, manifest, verdict, wrote)
        if error is not None:
            raise error
        return step_folder

    def _strip(self, name: str) -> str:
        return name[len(DDP_PREFIX):] if _is_ddp(self.watch.model) and name.startswith(DDP_PREFIX) else name

    def _local_names(self) -> list[str]:
        """The parameters of every DDP bucket (FSDP2: every module) whose gradients were non-finite
        before the collective. A bucket is checked as a whole, so this names its parameters."""
        bad: list[str] = []
        for names, total in self._local_records:
            if not math.isfinite(float(total)):          # the failure path: a host sync is fine here
                bad.extend(self._strip(n) for n in names)
        return list(dict.fromkeys(bad))

    def _agree_on_folder(self, out: Path, step: int) -> Path:
        """Every rank the same new folder: each proposes the first free suffix, the largest wins."""
        import torch.distributed as dist
        proposal = bundle_writer.bundle_folder(out, step)
        suffix = int(proposal.name.rpartition("-")[2]) if proposal.name.count("-") > 1 else 0
        votes = torch.tensor([suffix], dtype=torch.int64)
        dist.all_reduce(votes, op=dist.ReduceOp.MAX, group=self.group)
        n = int(votes.item())
        return out / (f"step-{step:06d}" + (f"-{n}" if n else ""))

    def _agree_on_writers(self, ok: bool) -> list[int]:
        import torch.distributed as dist
        table = torch.zeros(self.world_size)
        table[self.rank] = 1.0 if ok else 0.0
        try:
            dist.all_reduce(table, group=self.group)
        except RuntimeError:
            return [self.rank] if ok else []
        return [r for r, v in enumerate(table.tolist()) if v]

    def _write_top_manifest(self, folder: Path, manifest: BundleManifest, verdict: dict[str, Any],
                            wrote: list[int]) -> None:
        top = BundleManifest(**{k: getattr(manifest, k) for k in manifest.__dataclass_fields__})
        top.files, top.size_bytes = {}, 0
        top.detail = {**{k: v for k, v in manifest.detail.items() if k not in ("distributed", "shards")},
                      "distributed": {**verdict, "rank": None, "local_gradients": [],
                                      "ranks": {str(r): RANK_FOLDER.format(rank=r) for r in range(self.world_size)},
                                      "written": wrote}}
        top.what = _top_what(verdict, manifest)
        top.batch, top.micro_batches, top.rng = [], 0, {}
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / (MANIFEST_NAME + ".partial")
        partial.write_text(json.dumps(top.to_json(), indent=1), encoding="utf-8")
        os.replace(partial, folder / MANIFEST_NAME)

    def close(self) -> None:
        """Hooks stay registered (DDP cannot remove a comm hook) but stop checking."""
        self.enabled = False
        self._local_records.clear()


# ---- helpers --------------------------------------------------------------------------------------

def _top_what(verdict: dict[str, Any], manifest: BundleManifest) -> str:
    origin = verdict.get("origin_ranks") or []
    contaminated = verdict.get("contaminated_ranks") or []
    if verdict.get("born_in_collective"):
        head = "NaN/Inf born in the gradient collective (finite on every rank before it)"
    else:
        head = f"NaN/Inf born on rank {', '.join(map(str, origin))} ({manifest.check})" if origin else \
            f"NaN/Inf ({manifest.check})"
    return head + (f"; rank {', '.join(map(str, contaminated))} {_contaminated_how(verdict)}" if contaminated else "")


def _contaminated_how(verdict: dict[str, Any]) -> str:
    if verdict.get("check_every", 1) > 1:
        return "only contaminated later (through the collective or the weights; check_every > 1)"
    return "only contaminated by the collective"


def _finiteness_probe(flat: torch.Tensor) -> torch.Tensor:
    """One number that is NaN/Inf when `flat` holds NaN/Inf: its sum, in float32, on the device.
    A sum is one fused pass; on CPU it is ~30x cheaper than max |x| (the inf-norm, isfinite().all()).
    A finite sum overflows only past 3.4e38, far beyond any gradient that still trains."""
    return flat.detach().sum(dtype=torch.float32).reshape(1)


def _is_ddp(model: Any) -> bool:
    from torch.nn.parallel import DistributedDataParallel
    return isinstance(model, DistributedDataParallel)


def _class_name(module: Any) -> str:
    """The user's class: DDP's wrapped module; FSDP2's original class, not its FSDP<Name> subclass."""
    if _is_ddp(module):
        module = module.module
    cls = type(module)
    if cls.__name__.startswith("FSDP") and len(cls.__bases__) > 1:
        cls = cls.__bases__[-1]
    return f"{cls.__module__}:{cls.__qualname__}"


def _find_ddp(model: Any) -> Any:
    """The DistributedDataParallel wrapper of `model`: itself, Lightning's strategy model, or
    (Hugging Face / Accelerate keep it out of the callback's reach) any live DDP holding it."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    if isinstance(model, DDP):
        return model
    strategy_model = getattr(getattr(getattr(model, "_trainer", None), "strategy", None), "model", None)
    if isinstance(strategy_model, DDP):
        return strategy_model
    with warnings.catch_warnings():      # isinstance() on deprecated torch objects warns
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            if isinstance(obj, DDP) and any(m is model for m in obj.module.modules()):
                return obj
    return None


def _fsdp_modules(model: Any) -> list[tuple[str, Any]]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return []
    return [(name, m) for name, m in model.named_modules() if isinstance(m, FSDPModule)]


def _is_default_reduce_scatter(groups: list[Any]) -> bool:
    try:
        from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultReduceScatter
    except ImportError:
        return False
    return all(type(getattr(g, "_reduce_scatter_comm", None)) is DefaultReduceScatter for g in groups)


def _checked_reduce_scatter(guard: RankGuard, module_name: str) -> Any:
    """FSDP2's default reduce-scatter, checking its input (this rank's gradients) first."""
    try:
        from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultReduceScatter
    except ImportError:
        return None

    class CheckedReduceScatter(DefaultReduceScatter):
        def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: Any, op: Any,
                     async_op: bool = False) -> Any:
            guard.note_reduce_scatter_input(module_name, input_tensor)
            return super().__call__(output_tensor, input_tensor, group, op, async_op)

    return CheckedReduceScatter()


def _unwrapped_names(model: Any) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def _localise(state: dict[str, Any], strip: Any = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """DTensors to this rank's shard plus where it sits in the full tensor (global shape, offsets)."""
    out: dict[str, torch.Tensor] = {}
    shards: dict[str, Any] = {}
    for key, value in state.items():
        name = strip(key) if strip else key
        if not isinstance(value, torch.Tensor):
            continue
        placement = shard_of(value)
        if placement is not None:
            shards[name] = placement
        out[name] = local_tensor(value).detach()
    return out, shards


def shard_of(t: Any) -> Optional[dict[str, Any]]:
    """{global_shape, offsets} of a DTensor's local shard; None for a plain tensor."""
    if type(t).__name__ != "DTensor":
        return None
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    shape, offsets = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return {"global_shape": list(t.shape), "offsets": [int(o) for o in offsets], "local_shape": list(shape)}


class _LocalOptimizer:
    """The optimizer as bundle_writer sees it: its state_dict() with every DTensor replaced by
    this rank's shard (their placements go to the manifest's detail["shards"]["optimizer"])."""

    def __init__(self, optimizer: Any, shards: dict[str, Any]):
        self._optimizer = optimizer
        self._shards = shards
        self.__class__ = type(type(optimizer).__name__, (_LocalOptimizer,),
                              {"__module__": type(optimizer).__module__, "__qualname__": type(optimizer).__qualname__})

    def state_dict(self) -> dict[str, Any]:
        sd = self._optimizer.state_dict()
        placements: dict[str, Any] = {}
        state = {}
        for index, entry in sd["state"].items():
            state[index] = {}
            for key, value in entry.items():
                placement = shard_of(value) if isinstance(value, torch.Tensor) else None
                if placement is not None:
                    placements[f"{index}/{key}"] = placement
                state[index][key] = local_tensor(value) if isinstance(value, torch.Tensor) else value
        self._shards["optimizer"] = placements
        return {"state": state, "param_groups": sd["param_groups"]}
